"""`maectl model list`: the registered MAE architectures."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="inspect the registered MAE models")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="list registered models with their sizes")
    ls.set_defaults(handler=_list)


def _list(args) -> int:
    from rich.console import Console
    from rich.table import Column, Table

    from mae_core.models.registry import list_models, model_config

    table = Table(Column("name", no_wrap=True), "image", "patch", "encoder (dim x depth x heads)", "decoder (dim x depth x heads)")
    for name in list_models():
        c = model_config(name)
        table.add_row(
            name, str(c.img_size), str(c.patch_size),
            f"{c.embed_dim} x {c.depth} x {c.num_heads}",
            f"{c.decoder_embed_dim} x {c.decoder_depth} x {c.decoder_num_heads}",
        )
    Console().print(table)
    return 0
