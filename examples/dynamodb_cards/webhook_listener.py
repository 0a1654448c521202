"""A stand-in for a Slack incoming webhook: prints each JSON body posted to it.

    python examples/dynamodb_cards/webhook_listener.py     # listens on 127.0.0.1:8989
"""

import http.server
import sys


class _Print(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        sys.stdout.write(body.decode('utf-8', 'replace') + '\n')
        sys.stdout.flush()
        self.send_response(200)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == '__main__':
    http.server.ThreadingHTTPServer(('127.0.0.1', 8989), _Print).serve_forever()
