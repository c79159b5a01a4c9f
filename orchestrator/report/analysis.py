"""The numbers a report shows, from a sweep's tables: seed summaries per setting, and matching.

A *setting* is a combination of the swept keys other than seeds (`seed`, `train.data_seed`), which are
averaged over. `summary` and `stability_summary` are what `lth results` prints and what every figure
and table of `lth report` draws.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

import pyarrow as pa

from trainables.config import UserError
from trainables.results import DENSE, TICKET, endpoint_error

Summary = tuple[list[str], list[dict[str, Any]]]  # (setting keys, rows): `summary`, `stability_summary`


class ReportError(ValueError, UserError):
    """Options that do not fit the sweep's data; the message names the fix."""


SEED_KEYS = ("seed", "train.data_seed")  # replicates: averaged over, never a setting of their own
# What a level's sparsity is measured by (`lth report --x`): nominal, on an input-output path, multiply-accumulates.
X_COLUMNS = ("weights_remaining", "effective_weights_remaining", "flops_remaining")


def settings(df) -> list[str]:
    """Add a column per swept key (other than seeds) from `overrides`; returns their names."""
    overrides = df["overrides"].map(json.loads)
    keys = sorted({k for o in overrides for k in o} - set(SEED_KEYS))
    for key in keys:
        df[key] = overrides.map(lambda o: json.dumps(o[key]) if isinstance(o.get(key), list) else o.get(key))
    return keys


def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN (the std of one sample) as None; numpy scalars as Python numbers."""
    return [{k: None if isinstance(v, float) and v != v else v.item() if hasattr(v, "item") else v
             for k, v in row.items()} for row in rows]


def stability_summary(table: pa.Table) -> Summary:
    """Per setting (swept keys other than seeds, e.g. k and level) and split: instability mean and std over
    the pairs of copies (replicates x seeds), the mean endpoint error and the fraction of stable pairs."""
    df = table.to_pandas()
    if df.empty:
        return [], []
    keys = settings(df)
    df["endpoint_error"] = endpoint_error(df)
    grouped = df.groupby([*keys, "split"], dropna=False, sort=True).agg(
        level=("level", "first"), rewind_iter=("rewind_iter", "first"),
        weights_remaining=("weights_remaining", "mean"), pairs=("instability", "size"),
        instability_mean=("instability", "mean"), instability_std=("instability", "std"),
        endpoint_error=("endpoint_error", "mean"), stable_fraction=("stable", "mean"),
        threshold=("threshold", "first")).reset_index()
    return keys, clean(grouped.to_dict("records"))


def summary(table: pa.Table, column: str = "test_accuracy") -> Summary:
    """Per setting (the swept keys other than seeds) and level: mean and std over seeds of each
    variant's `column` (`{variant}_mean`, `{variant}_std`; `dense_*` is level 0's) and its mean effective weights
    and FLOPs remaining (`{variant}_effective_weights_remaining`, `{variant}_flops_remaining`). Level 0's dense
    network counts as the ticket at 100% of weights. Returns the setting keys and one row per
    (setting, level)."""
    df = table.to_pandas()
    if df.empty:
        return [], []
    keys = settings(df)
    dense = df[df["variant"] == DENSE].groupby(keys, dropna=False)[column].agg(["mean", "std"]) \
        if keys else df[df["variant"] == DENSE][column].agg(["mean", "std"])
    df["variant"] = df["variant"].where(df["variant"] != DENSE, TICKET)  # the dense network is level 0's ticket
    measured = [x for x in X_COLUMNS[1:] if x in df]  # tables written before these columns lack them
    grouped = df.groupby([*keys, "level", "variant"], dropna=False).agg(
        remaining=("weights_remaining", "mean"), mean=(column, "mean"), std=(column, "std"), n=(column, "size"),
        **{x: (x, "mean") for x in measured})
    rows: dict[tuple, dict[str, Any]] = {}
    for index, values in grouped.iterrows():
        *setting, level, variant = index
        row = rows.setdefault((*setting, level), {**dict(zip(keys, setting)), "level": int(level),
                                                  "weights_remaining": values["remaining"], "seeds": 0})
        row[f"{variant}_mean"], row[f"{variant}_std"] = values["mean"], values["std"]
        row |= {f"{variant}_{x}": values[x] for x in measured}  # a control's mask has its own
        if variant == TICKET:
            row["seeds"] = int(values["n"])
    for (*setting, _), row in rows.items():
        ref = dense.loc[tuple(setting) if len(setting) > 1 else setting[0]] if keys else dense
        row["dense_mean"], row["dense_std"] = ref["mean"], ref["std"]
    ordered = [row for _, row in sorted(rows.items(), key=lambda item: tuple(map(str, item[0][:-1])) + (item[0][-1],))]
    return keys, clean(ordered)


# ---------------------------------------------------------------------------------------------
# the matching table


def groups(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows by their values of `keys`, in the order of those values."""
    out: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return dict(sorted(out.items(), key=lambda item: tuple(map(sort_key, item[0]))))


def sort_key(value: Any) -> tuple:
    """Numbers by value, durations ('300it') by count, the rest as text; None first."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    match = re.fullmatch(r"(\d+)(it|ep)", str(value))
    return (1, float(match.group(1)), match.group(2)) if match else (2, 0.0, str(value))


def parse_tolerance(text: str) -> tuple[str, float]:
    """'1std' -> ('std', 1.0): within one std of dense; '0.5pt' -> ('pt', 0.005): within 0.5 accuracy points."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(std|pt)\s*", text)
    if not match:
        raise ReportError(f"--tolerance {text!r}: expected a multiple of dense's std over seeds such as 1std "
                          "(the LMC paper's definition of matching) or accuracy points such as 0.5pt")
    value, unit = float(match.group(1)), match.group(2)
    return unit, value if unit == "std" else value / 100


RULES = {  # what a table calls matching: the LMC paper's tolerance, or the LTH paper's winning-ticket criterion
    "lmc": "matching (Frankle et al. 2020): mean accuracy over seeds at least dense's mean minus the tolerance",
    "lth": "winning ticket (Frankle & Carbin 2019): mean early-stop accuracy over seeds at least dense's, reached "
           "in no more iterations (mean early-stop iteration at most dense's)"}


def matching(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], variants: Sequence[str], tolerance: str,
             rule: str = "lmc", iterations: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Per setting (`summary` rows): the dense mean and std, the tolerance used, and per variant the
    pruned level with the fewest weights remaining that is matching (None: no level is), with the denser
    levels that are not (`gaps`: noise or a real dip, the reader decides), and the ticket's best pruned
    level. Rule `lmc`: mean accuracy >= dense mean - tolerance. Rule `lth`: `rows` summarise the
    early-stop accuracy and `iterations` the early-stop iteration; mean accuracy >= dense mean and mean
    iteration <= dense's (no tolerance)."""
    if rule not in RULES:
        raise ReportError(f"--rule {rule!r}: expected one of {', '.join(RULES)}")
    unit, amount = parse_tolerance(tolerance)
    speed = {(tuple(r.get(k) for k in keys), r["level"]): r for r in iterations}
    out = []
    for setting, setting_rows in groups(rows, keys).items():
        first = setting_rows[0]
        std = first["dense_std"]
        entry = {"setting": dict(zip(keys, setting)), "dense_mean": first["dense_mean"], "dense_std": std,
                 "tolerance": 0.0 if rule == "lth" else amount * (std or 0.0) if unit == "std" else amount,
                 "tolerance_note": "one seed: no std, so at least dense" if (
                     rule == "lmc" and unit == "std" and std is None) else ""}

        def fast(r: Mapping[str, Any], variant: str) -> bool:
            if rule == "lmc":
                return True
            here = speed[(setting, r["level"])]
            return here[f"{variant}_mean"] <= here["dense_mean"] + 1e-9

        pruned = sorted((r for r in setting_rows if r["level"] > 0), key=lambda r: r["level"])
        for variant in variants:
            levels = [r for r in pruned if r.get(f"{variant}_mean") is not None]
            matches = [r[f"{variant}_mean"] >= first["dense_mean"] - entry["tolerance"] - 1e-12 and fast(r, variant)
                       for r in levels]
            last = max((i for i, m in enumerate(matches) if m), default=None)
            entry[variant] = None if last is None else {
                "level": levels[last]["level"], "weights_remaining": levels[last]["weights_remaining"],
                "all_levels": last == len(levels) - 1,
                "gaps": [r["weights_remaining"] for r, m in zip(levels[:last], matches) if not m]}
        best = max((r for r in pruned if r.get("ticket_mean") is not None), key=lambda r: r["ticket_mean"],
                   default=None)
        entry["best_ticket"] = None if best is None else {
            "level": best["level"], "weights_remaining": best["weights_remaining"], "mean": best["ticket_mean"]}
        out.append(entry)
    return out

