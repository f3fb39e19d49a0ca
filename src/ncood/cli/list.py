"""``ncood list models|datasets|detectors|regimes``: what the registries hold, one line each.

Each line is the registered name and the first paragraph of its docstring::

    $ ncood list detectors
    energy       Negative free energy: T * logsumexp(f / T).
    ...
"""

from __future__ import annotations

import argparse
import inspect

KINDS = ("models", "datasets", "detectors", "regimes")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="list the registered models, datasets, detectors or regimes",
        description=(
            "Print every registered name of one kind with a one-line description "
            "(the names a config or a flag accepts)."
        ),
    )
    p.add_argument("kind", choices=KINDS, help="what to list")
    p.set_defaults(func=run)


def summary(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring on one line, without RST markup."""
    doc = inspect.getdoc(obj) or ""
    first = " ".join(doc.split("\n\n", 1)[0].split())
    return first.replace("``", "")


def entries(kind: str) -> list[tuple[str, str]]:
    """``(name, description)`` for every registered name of ``kind``, sorted by name.

    A name registered for the same object as an earlier one (an alias) is described as
    such. ``datasets`` also lists the ``folder:PATH`` and ``npz:PATH`` forms.
    """
    # heavy (torch, numpy, scipy): the registries fill in as their modules are imported;
    # imported here so that `ncood --help` stays fast
    if kind == "models":
        from ncood.models import MODELS as registry
    elif kind == "datasets":
        from ncood.data import DATASETS as registry
    elif kind == "detectors":
        import ncood.detectors  # noqa: F401  (registers every detector)
        from ncood.detectors.base import DETECTORS as registry
    elif kind == "regimes":
        from ncood.train.regimes import REGIMES as registry
    else:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    rows: list[tuple[str, str]] = []
    first_name: dict[int, str] = {}
    for name in registry.names():
        obj = registry.get(name)
        if id(obj) in first_name:
            rows.append((name, f"same as {first_name[id(obj)]}"))
        else:
            first_name[id(obj)] = name
            rows.append((name, summary(obj)))
    if kind == "datasets":
        rows.append(("folder:PATH", "images under PATH/<class>/ (a flat folder: unlabelled)"))
        rows.append(("npz:PATH", "arrays 'images' (and optional 'labels') in an .npz file"))
    if kind == "detectors":  # not a registered (feature-array) detector: it runs the network
        rows.append(
            (
                "odin",
                "ODIN: max softmax(f(x~) / T) on the input perturbed to raise it (runs the "
                "network: ncood.evaluate / ncood.odin, not ncood score)",
            )
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = entries(args.kind)
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}".rstrip())
    return 0
