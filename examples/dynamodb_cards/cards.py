"""The seed's example on changeflow: the Card table's model and its handlers.

Referenced from job.yaml as ``cards:Card``, ``cards:new_card_informer`` ...;
this folder (the config's) is searched for the module, so the job runs from a
checkout. On a cluster, install the module with the job (``--setup_file``).
"""

import dataclasses
import json
import logging
import os
import urllib.request
from typing import List, Optional

from changeflow.handlers import InsertEvent, RemoveEvent
from changeflow.io.files import write_file

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Card:
    """prod-Card: hash key ``id``, range key ``title``; ``expiresAt`` its TTL attribute."""
    __key__ = ('id', 'title')
    id: int
    title: str
    expiresAt: Optional[int] = None


def new_card_informer(webhook_url: str, timeout: float = 10.0):
    """INSERT -> one Slack-compatible message (``{"text": ...}``) per new card.

    A factory: job.yaml's ``options`` are its arguments, and the returned
    function is the handler. A 5xx answer or a refused connection raises
    HTTPError/URLError, which changeflow retries with backoff."""
    def inform(events: List[InsertEvent[Card]]):
        for event in events:
            body = json.dumps({'text': f'New Card! : {event.new.id} ({event.new.title})',
                               'change_id': event.change_id}).encode()
            request = urllib.request.Request(webhook_url, body, method='POST',
                                             headers={'Content-Type': 'application/json'})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
    return inform


def deleted_card_backup(path: str):
    """REMOVE -> the old image as JSON at ``path/<id>-<title>.json`` (local or
    s3://; a relative path is relative to this folder)."""
    if '://' not in path:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), path)

    def backup(events: List[RemoveEvent[Card]]):
        for event in events:
            card = event.old
            name = f'{card.id}-{card.title}.json'
            write_file(f'{path}/{name}',
                       json.dumps({**dataclasses.asdict(card), 'ttl': event.ttl,
                                   'change_id': event.change_id}).encode())
    return backup


def new_card_error(events):
    """The seed's handler that always fails: its events are dead-lettered,
    the other handlers never notice."""
    raise RuntimeError('XXXX')


def catch_error(handler, events, error):
    """Called with exactly the events of the failed call."""
    _LOG.warning('%s failed on %d event(s): %s', handler.name, len(events), error)
