"""``lychee-rerank opensearch install | check | uninstall``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lychee_rerank.plugins._common import (
    add_check_arguments,
    add_service_arguments,
    print_actions,
    print_check,
    service_api_key,
)
from lychee_rerank.plugins.opensearch.bodies import DEFAULT_NAME
from lychee_rerank.plugins.opensearch.cluster import (
    InstallCheckError,
    InstallResult,
    check_rerank_pipeline,
    install_rerank_pipeline,
    uninstall_rerank_pipeline,
)
from lychee_rerank.plugins.opensearch.network import Resolver

if TYPE_CHECKING:
    from opensearchpy import OpenSearch

DESCRIPTION = """\
Sets OpenSearch up to rerank with the lychee-rerank service: trusts the service's URL, creates an
ml-commons connector to its /v1/rerank, registers and deploys a remote model, and creates a search
pipeline with the rerank response processor. Every step is idempotent: install can be re-run.
install ends with check (a test rerank and a real search through the pipeline on a temporary index) and
exits 1, saying what failed, when the cluster cannot score through the service. A service host that
resolves to a private or loopback address needs plugins.ml_commons.connector.private_ip_enabled
(OpenSearch 2.15+): install decides from what the host resolves to; --private-ip/--no-private-ip decide
instead. Needs OpenSearch 2.12 or later with the ml-commons and neural-search plugins.
"""

ClientFactory = Callable[[argparse.Namespace], "OpenSearch"]


def _default_client(args: argparse.Namespace) -> OpenSearch:
    from lychee_rerank.core.extras import require

    module = require("opensearchpy", "opensearch")
    options: dict[str, Any] = {}
    if args.os_user:
        options["http_auth"] = (args.os_user, args.os_password or "")
    if args.insecure:
        options["verify_certs"] = False
        options["ssl_show_warn"] = False
    client: OpenSearch = module.OpenSearch(args.os_url, **options)
    return client


def _install_command(args: argparse.Namespace) -> int:
    try:
        result = install_rerank_pipeline(
            args.client_factory(args),
            args.rerank_url,
            document_fields=args.document_field or ["text"],
            name=args.name,
            pipeline_id=args.pipeline_id,
            api_key=service_api_key(args.api_key),
            multimodal=args.multimodal,
            allow_private_ip=args.allow_private_ip,
            replace=args.replace,
            combine_fields_into=args.combine_fields_into,
            ingest_pipeline_id=args.ingest_pipeline_id,
            verify=not args.no_verify,
            resolver=args.resolver,
        )
    except InstallCheckError as error:
        _print_install(error.result)
        print("NOT OK: installed, but OpenSearch cannot rerank through the service")
        for problem in error.result.check.problems if error.result.check else []:
            print(f"  problem: {problem}")
        return 1
    _print_install(result)
    if result.check is not None:
        print(f"ok: a test search through {result.pipeline_id!r} was reranked by the service")
    print(f"search with: ?search_pipeline={result.pipeline_id} and ext.rerank.query_context.query_text")
    if "ingest_pipeline" in result.actions:
        ingest = args.ingest_pipeline_id or f"{args.name}-combine"
        print(
            f"index with: ?pipeline={ingest} (or set index.default_pipeline: {ingest}); existing documents: "
            f"POST <index>/_update_by_query?pipeline={ingest}"
        )
    return 0


def _print_install(result: InstallResult) -> None:
    print_actions(result.actions)
    print(f"connector_id: {result.connector_id}")
    print(f"model_id: {result.model_id}")
    for warning in result.warnings:
        print(f"warning: {warning}")


def _check_command(args: argparse.Namespace) -> int:
    status = check_rerank_pipeline(
        args.client_factory(args),
        name=args.name,
        pipeline_id=args.pipeline_id,
        probe=not args.no_probe,
        search=not args.no_search,
    )
    return print_check(
        status,
        title=f"search pipeline {status.pipeline_id!r}",
        lines=[f"connector: {status.connector_id}  model: {status.model_id} ({status.model_state})"],
        probe_scores=status.probe_scores,
        as_json=args.json,
    )


def _uninstall_command(args: argparse.Namespace) -> int:
    deleted = uninstall_rerank_pipeline(args.client_factory(args), name=args.name, pipeline_id=args.pipeline_id)
    for kind, ids in deleted.items():
        print(f"deleted {kind}: {', '.join(ids) if ids else 'none'}")
    return 0


def register(subparsers: Any, *, client_factory: ClientFactory | None = None, resolver: Resolver | None = None) -> None:
    """Adds ``lychee-rerank opensearch {install,check,uninstall}``.

    Args:
        subparsers: The ``add_subparsers()`` object of the ``lychee-rerank`` parser.
        client_factory: Builds the client from the parsed arguments; tests pass one that returns a client
            over a fake connection. By default an ``OpenSearch(--os-url)``.
        resolver: Resolves the service's host (``socket.getaddrinfo`` by default; tests pass a table).
    """
    parser = subparsers.add_parser(
        "opensearch",
        help="install the OpenSearch connector, model and rerank search pipeline",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="opensearch_command", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--os-url",
            default=os.environ.get("OPENSEARCH_URL", "http://localhost:9200"),
            help="the cluster's URL (default: $OPENSEARCH_URL or http://localhost:9200)",
        )
        command.add_argument(
            "--os-user", default=os.environ.get("OPENSEARCH_USER"), help="basic-auth user (default: $OPENSEARCH_USER)"
        )
        command.add_argument(
            "--os-password",
            default=os.environ.get("OPENSEARCH_PASSWORD"),
            help="basic-auth password; prefer $OPENSEARCH_PASSWORD, which the process list does not show",
        )
        command.add_argument("--insecure", action="store_true", help="do not verify the cluster's TLS certificate")
        command.add_argument("--name", default=DEFAULT_NAME, help="the connector's and model's name")
        command.add_argument("--pipeline-id", help="the search pipeline's id (default: --name)")
        command.set_defaults(client_factory=client_factory or _default_client)

    install = commands.add_parser("install", help="create or update connector, model and pipeline (idempotent)")
    common(install)
    add_service_arguments(install, engine="OpenSearch", stored_as="an encrypted connector credential")
    install.add_argument(
        "--document-field",
        action="append",
        help="a _source field the service scores (repeat; default: text)",
    )
    install.add_argument(
        "--private-ip",
        "--allow-private-ip",
        dest="allow_private_ip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="set plugins.ml_commons.connector.private_ip_enabled, or never (default: when the service's host "
        "resolves to a private or loopback address; OpenSearch 2.15+)",
    )
    install.add_argument(
        "--combine-fields-into",
        metavar="FIELD",
        help="create an ingest pipeline writing FIELD from the --document-field fields, one per line, and rerank "
        "on FIELD (the rerank processor joins several fields with no separator)",
    )
    install.add_argument("--ingest-pipeline-id", help="that ingest pipeline's id (default: NAME-combine)")
    install.add_argument("--no-verify", action="store_true", help="skip the final test rerank and search")
    install.set_defaults(handler=_install_command, resolver=resolver)

    check = commands.add_parser(
        "check", help="look every part up, rerank two test documents and search them through the pipeline"
    )
    common(check)
    add_check_arguments(check)
    check.add_argument(
        "--no-search", action="store_true", help="skip the test search (it creates and deletes a temporary index)"
    )
    check.set_defaults(handler=_check_command)

    uninstall = commands.add_parser("uninstall", help="delete the pipeline, the model and the connector")
    common(uninstall)
    uninstall.set_defaults(handler=_uninstall_command)
