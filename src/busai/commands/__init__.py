"""CLI sub-commands; each module exposes ``register(subparsers)`` and stays a thin layer over the library."""

import shlex


def command_line(args) -> str:
    """The command as typed, recorded in run folders and results so every number can be re-run."""
    return "busai " + shlex.join(args.argv)


def add_data_options(parser) -> None:
    """How each --data dataset is read, for every command that takes --data (one place)."""
    from busai.data.sources import FORMATS

    parser.add_argument(
        "--format",
        dest="formats",
        action="append",
        default=None,
        metavar="[NAME=]LAYOUT",
        help=f"force a dataset's layout instead of detecting it: {', '.join(FORMATS)}",
    )
    parser.add_argument(
        "--columns",
        action="append",
        default=None,
        metavar="[NAME=]MAP",
        help="the table's own column names, busai's = yours: e.g. image=ID,label=Pathology, or a YAML file of such pairs "
        "(layouts with a table: manifest, images-masks, bus-uclm)",
    )
    parser.add_argument(
        "--mask-pattern",
        dest="mask_patterns",
        action="append",
        default=None,
        metavar="[NAME=]PATTERN",
        help="how mask files are named, {stem} standing for the image's name without suffix: e.g. 'mask_{stem}.png' "
        "(default NAME_mask.png, NAME_mask_1.png ...; layouts busi, images-masks)",
    )


def data_specs(args, data=None) -> list:
    """The datasets of ``--data`` (or ``data``) with the reading options of :func:`add_data_options`."""
    from busai.data.sources import parse_data_specs

    return parse_data_specs(args.data if data is None else data, args.formats, args.columns, args.mask_patterns)
