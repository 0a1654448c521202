#!/usr/bin/env python3
"""Boots one Beam Python SDK worker for an EXTERNAL worker pool, as the SDK
container's boot program would: fetch the job's staged artifacts, pip-install
the ``--setup_file`` package, then run ``sdk_worker_main``.

Beam's own boot program is a Go binary that ships only in its container
images, which cannot be fetched here; ``worker_pool_main`` runs this instead
with ``--container_executable`` and the container contract's flags
(``--id``, ``--provision_endpoint``, ``--artifact_endpoint``,
``--control_endpoint``, ``--logging_endpoint``). It is started through the
worker pool's PATH (``env python3``), so the worker runs in whatever
environment that PATH names, and changeflow reaches it only as the staged
package.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import grpc
from google.protobuf import json_format, text_format

from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_artifact_api_pb2, beam_artifact_api_pb2_grpc, beam_provision_api_pb2,
    beam_provision_api_pb2_grpc, beam_runner_api_pb2, endpoints_pb2)

# Beam's stager names the --setup_file sdist so; the worker adds <dir>/staged
# to sys.path (a pickled main session lives there too).
WORKFLOW_TARBALL = 'workflow.tar.gz'
# Listed by the launcher for diagnosis only; nothing to install.
SUBMISSION_DEPENDENCIES = 'submission_environment_dependencies.txt'


def staged_name(artifact) -> str:
    if artifact.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
        raise SystemExit(f'unsupported artifact role {artifact.role_urn}')
    payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
        artifact.role_payload)
    return os.path.basename(payload.staged_name)


def fetch_artifacts(endpoint: str, metadata, dependencies, staged_dir: str) -> list:
    """Writes every artifact the job staged into ``staged_dir``; returns the names.
    (``artifact_service.resolve_as_files`` would do this, but in Beam 2.77 it
    calls a misspelt ``ResolveArtifactss`` and fails.)"""
    names = []
    with grpc.insecure_channel(endpoint) as channel:
        retrieval = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        for artifact in dependencies:
            name = staged_name(artifact)
            with open(os.path.join(staged_dir, name), 'wb') as out:
                for chunk in retrieval.GetArtifact(
                        beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact),
                        metadata=metadata):
                    out.write(chunk.data)
            names.append(name)
    return names


def install_staged(staged_dir: str, names, site_dir: str) -> None:
    """pip-installs the --setup_file package into ``site_dir``; refuses what this
    boot cannot honour (requirements files, extra packages), so a job never
    runs half-provisioned."""
    unsupported = set(names) - {WORKFLOW_TARBALL, SUBMISSION_DEPENDENCIES}
    if unsupported:
        raise SystemExit(f'staged artifacts this boot does not install: {sorted(unsupported)}')
    if WORKFLOW_TARBALL in names:
        # Offline: no build isolation (setuptools and wheel come from the
        # environment), no dependencies (the environment holds them); into a
        # folder of its own, so nothing installed elsewhere is replaced.
        subprocess.run(
            [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
             '--no-build-isolation', '--no-index', '--disable-pip-version-check',
             '--target', site_dir, os.path.join(staged_dir, WORKFLOW_TARBALL)],
            check=True, stdout=sys.stderr)  # see main() on stdout


def descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ('id', 'provision_endpoint', 'artifact_endpoint', 'control_endpoint',
                 'logging_endpoint'):
        parser.add_argument(f'--{flag}', required=True)
    args = parser.parse_args(argv)
    metadata = [('worker_id', args.id)]  # the job service serves each worker by it
    with grpc.insecure_channel(args.provision_endpoint) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=metadata).info
    semi_persistent_dir = tempfile.mkdtemp(prefix=f'beam-{args.id}-')
    staged_dir = os.path.join(semi_persistent_dir, 'staged')
    os.makedirs(staged_dir)
    names = fetch_artifacts(args.artifact_endpoint, metadata, info.dependencies, staged_dir)
    site_dir = os.path.join(semi_persistent_dir, 'site-packages')
    install_staged(staged_dir, names, site_dir)
    env = dict(
        os.environ,
        PYTHONPATH=site_dir,
        WORKER_ID=args.id,
        PIPELINE_OPTIONS=json.dumps(json_format.MessageToDict(info.pipeline_options)),
        SEMI_PERSISTENT_DIRECTORY=semi_persistent_dir,
        CONTROL_API_SERVICE_DESCRIPTOR=descriptor(info.control_endpoint.url
                                                  or args.control_endpoint),
        LOGGING_API_SERVICE_DESCRIPTOR=descriptor(info.logging_endpoint.url
                                                  or args.logging_endpoint),
        RUNNER_CAPABILITIES=' '.join(info.runner_capabilities))
    if info.status_endpoint.url:
        env['STATUS_API_SERVICE_DESCRIPTOR'] = descriptor(info.status_endpoint.url)
    # The pool pipes a worker's stdout and never reads it: a worker that printed
    # 64 KiB there (a `to: stdout` notification rule) would block. Send it to
    # stderr, which the pool passes on to its own.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.execve(sys.executable,
              [sys.executable, '-m', 'apache_beam.runners.worker.sdk_worker_main'], env)


if __name__ == '__main__':
    main()
