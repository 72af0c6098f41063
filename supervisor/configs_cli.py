"""`supervisor configs`: add, update, disable, delete, seed and list copy-trading configs.

Meant for tests, load tests and smoke checks, not for the platform's users. Every write sets
`"updatedAt"`, so a running supervisor picks the change up at its next refresh: an incremental
one for adds, updates and disables, a full one for deletes. `add` prints only the new id, so
scripts can capture it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa

    from supervisor.config_cache import ConfigRow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `configs` subcommands and their options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        help="database holding the configs (default: SUPERVISOR_DATABASE_URL, else "
        "./supervisor.db)",
    )
    actions = parser.add_subparsers(dest="configs_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", parents=[common], help="add a config and print its id")
    add.add_argument("--channel", required=True, help="channel whose events the config copies")
    add.add_argument("--user-id", help="follower id (default: a random cli-user-... id)")
    add.add_argument("--id", dest="config_id", help="config id (default: cfg_ and 32 hex digits)")
    _add_sizing_options(add)
    add.add_argument("--inactive", action="store_true", help='store "isActive" false')
    add.add_argument(
        "--no-auto-execute", action="store_true", help='store "autoExecute" false'
    )
    add.set_defaults(handler=_add)

    update = actions.add_parser("update", parents=[common], help="change fields of a config")
    update.add_argument("config_id", metavar="ID")
    update.add_argument("--channel", help="new channel")
    update.add_argument("--user-id", help="new follower id")
    _add_sizing_options(update)
    update.add_argument(
        "--active", action=argparse.BooleanOptionalAction, help='set or clear "isActive"'
    )
    update.add_argument(
        "--auto-execute",
        action=argparse.BooleanOptionalAction,
        help='set or clear "autoExecute"',
    )
    update.set_defaults(handler=_update)

    disable = actions.add_parser("disable", parents=[common], help='set "isActive" false')
    disable.add_argument("config_id", metavar="ID")
    disable.set_defaults(handler=_disable)

    delete = actions.add_parser("delete", parents=[common], help="delete a config")
    delete.add_argument("config_id", metavar="ID")
    delete.set_defaults(handler=_delete)

    seed = actions.add_parser(
        "seed", parents=[common], help="add many configs over many channels"
    )
    seed.add_argument("--configs", type=int, required=True, help="number of configs to add")
    seed.add_argument("--channels", type=int, required=True, help="number of channels")
    seed.add_argument(
        "--zipf-s",
        type=float,
        default=1.1,
        help="popularity exponent: channel k gets weight 1/k**s (default 1.1; 0 is uniform)",
    )
    seed.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    seed.add_argument(
        "--channel-prefix", default="ch-", help="channel names are PREFIX0, PREFIX1, ..."
    )
    seed.set_defaults(handler=_seed)

    listing = actions.add_parser("list", parents=[common], help="list configs")
    listing.add_argument("--channel", help="only the configs of this channel")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(handler=_list)


def _add_sizing_options(parser: argparse.ArgumentParser) -> None:
    sizing = parser.add_mutually_exclusive_group()
    sizing.add_argument(
        "--multiplier", type=float, help="multiplier sizing: trade event quantity times this"
    )
    sizing.add_argument(
        "--fixed-quantity", type=float, help="fixed sizing: trade this quantity on every event"
    )
    parser.add_argument("--max-quantity", type=float, help="cap on each copy trade's quantity")


def main(args: argparse.Namespace) -> int:
    """Run one `configs` action; return 1 with a message on stderr when it fails."""
    import sqlalchemy as sa

    from supervisor.db import DatabaseError, create_engine_from_url, table_exists
    from supervisor.settings import Settings, mask_url

    database_url: str = args.database_url or Settings.from_env().database_url
    shown_url = mask_url(database_url)
    handler: Callable[[sa.Engine, argparse.Namespace], None] = args.handler
    try:
        engine = create_engine_from_url(database_url)
    except DatabaseError as error:
        return _fail(str(error))
    try:
        if not table_exists(engine):
            return _fail(
                f'table "CopyTradingConfig" not found in {shown_url}; create it with '
                f"`supervisor migrate --database-url URL`"
            )
        handler(engine, args)
    except DatabaseError as error:
        return _fail(f"{error} in {shown_url}")
    except sa.exc.SQLAlchemyError as error:
        return _fail(f"database {shown_url} failed: {error}")
    finally:
        engine.dispose()
    return 0


def _fail(message: str) -> int:
    print(f"supervisor configs: {message}", file=sys.stderr)
    return 1


def _sizing_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.fixed_quantity is not None:
        fields.update(sizing_mode="fixed", fixed_quantity=args.fixed_quantity)
    elif args.multiplier is not None:
        fields.update(sizing_mode="multiplier", multiplier=args.multiplier)
    if args.max_quantity is not None:
        fields["max_quantity"] = args.max_quantity
    return fields


def _add(engine: sa.Engine, args: argparse.Namespace) -> None:
    import uuid

    from supervisor.db import add_config

    fields = {"multiplier": 1.0, **_sizing_fields(args)}
    config_id = add_config(
        engine,
        channel=args.channel,
        user_id=args.user_id or f"cli-user-{uuid.uuid4().hex[:8]}",
        is_active=not args.inactive,
        auto_execute=not args.no_auto_execute,
        config_id=args.config_id,
        **fields,
    )
    print(config_id)


def _update(engine: sa.Engine, args: argparse.Namespace) -> None:
    from supervisor.db import InvalidConfigError, update_config

    changes = _sizing_fields(args)
    for name, value in (
        ("channel", args.channel),
        ("user_id", args.user_id),
        ("is_active", args.active),
        ("auto_execute", args.auto_execute),
    ):
        if value is not None:
            changes[name] = value
    if not changes:
        raise InvalidConfigError(
            f"nothing to update for config {args.config_id}; pass at least one field option"
        )
    row = update_config(engine, args.config_id, **changes)
    print(f"Updated {row.id}: {_describe(row)}")


def _disable(engine: sa.Engine, args: argparse.Namespace) -> None:
    from supervisor.db import disable_config

    row = disable_config(engine, args.config_id)
    print(f"Disabled {row.id}; running supervisors evict it at their next refresh")


def _delete(engine: sa.Engine, args: argparse.Namespace) -> None:
    from supervisor.db import delete_config

    delete_config(engine, args.config_id)
    print(f"Deleted {args.config_id}; running supervisors drop it at their next full refresh")


def _seed(engine: sa.Engine, args: argparse.Namespace) -> None:
    from supervisor.db import seed_configs

    summary = seed_configs(
        engine,
        args.configs,
        args.channels,
        args.zipf_s,
        args.seed,
        channel_prefix=args.channel_prefix,
    )
    counts = sorted(summary.per_channel.values(), reverse=True)
    largest = max(summary.per_channel, key=lambda name: summary.per_channel[name], default="-")
    print(
        f"Seeded {summary.configs} configs over {summary.channels} channels "
        f"(prefix {args.channel_prefix!r}, zipf_s={args.zipf_s}, seed={args.seed}): "
        f"largest {largest} with {counts[0] if counts else 0}, "
        f"smallest {counts[-1] if counts else 0}, "
        f"{summary.channels - len(counts)} channels empty"
    )


def _list(engine: sa.Engine, args: argparse.Namespace) -> None:
    from supervisor.db import list_configs

    rows = list_configs(engine, channel=args.channel)
    if args.json:
        print(json.dumps([_as_json(row) for row in rows], indent=2))
        return
    for row in rows:
        print(f"{row.id}  {row.channel}  {_describe(row)}")
    print(f"{len(rows)} configs")


def _describe(row: ConfigRow) -> str:
    if row.sizing_mode == "fixed":
        sizing = f"fixed {row.fixed_quantity}"
    else:
        sizing = f"multiplier {row.multiplier}"
    cap = "" if row.max_quantity is None else f" max {row.max_quantity}"
    flags = f"active={str(row.is_active).lower()} autoExecute={str(row.auto_execute).lower()}"
    return f"user={row.user_id} {sizing}{cap} {flags} updatedAt={_iso_ms(row)}"


def _iso_ms(row: ConfigRow) -> str:
    return row.updated_at.isoformat(timespec="milliseconds") + "Z"


def _as_json(row: ConfigRow) -> dict[str, object]:
    return {
        "id": row.id,
        "userId": row.user_id,
        "channel": row.channel,
        "isActive": row.is_active,
        "autoExecute": row.auto_execute,
        "sizingMode": row.sizing_mode,
        "fixedQuantity": row.fixed_quantity,
        "multiplier": row.multiplier,
        "maxQuantity": row.max_quantity,
        "updatedAt": _iso_ms(row),
    }
