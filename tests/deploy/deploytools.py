"""Readers for the deployment files (Dockerfiles, compose, manifests) and a small PromQL name checker."""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from service.settings import PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "gpu": DEPLOY / "Dockerfile.gpu"}
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "castream.json"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
SETTING_NAMES = {PREFIX + name.upper() for name in Settings.model_fields}
DEFAULT_MODEL = Path(Settings.model_fields["model_path"].default)  # where `make export` writes the model


def load_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests(variant: str) -> dict[str, dict]:
    """The Kubernetes objects applied for ``variant`` ("cpu" or "gpu"), by kind: common/ plus the variant's folder."""
    objects: dict[str, dict] = {}
    for folder in (K8S / "common", K8S / variant):
        for path in sorted(folder.glob("*.yaml")):
            for doc in load_yaml_documents(path):
                assert doc["kind"] not in objects, f"two {doc['kind']} objects for the {variant} variant"
                objects[doc["kind"]] = doc
    return objects


def all_manifest_files() -> list[Path]:
    return sorted(path for folder in ("common", "cpu", "gpu") for path in (K8S / folder).glob("*.yaml"))


# Dockerfiles


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, continuation lines joined and comments dropped, each tagged with its stage name."""
    instructions, stage, pending = [], "", ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else words[0]
        instructions.append(Instruction(stage, keyword, " ".join(args.split())))
    return instructions


def stages(path: Path) -> dict[str, str]:
    """Stage name -> the image or stage it starts from."""
    return {i.stage: i.args.split()[0] for i in dockerfile(path) if i.keyword == "FROM"}


def stage_chain(path: Path, stage: str) -> list[str]:
    """``stage`` and the stages it builds on, nearest first."""
    parents, chain = stages(path), [stage]
    while parents.get(chain[-1]) in parents:
        chain.append(parents[chain[-1]])
    return chain


def image_env(path: Path, stage: str) -> dict[str, str]:
    """Environment set by ENV in ``stage`` and the stages it is built from."""
    chain = stage_chain(path, stage)
    env: dict[str, str] = {}
    for instruction in dockerfile(path):
        if instruction.keyword == "ENV" and instruction.stage in chain:
            for word in shlex.split(instruction.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def stage_instructions(path: Path, stage: str, keyword: str) -> list[str]:
    chain = stage_chain(path, stage)
    return [i.args for i in dockerfile(path) if i.keyword == keyword and i.stage in chain]


def copies(path: Path) -> list[tuple[str, str, str]]:
    """(stage, source, destination) for every COPY from the build context (not from another stage)."""
    found = []
    for instruction in dockerfile(path):
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        words = [word for word in instruction.args.split() if not word.startswith("--")]
        found += [(instruction.stage, source, words[-1]) for source in words[:-1]]
    return found


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def in_build_context(ignore_file: Path, relative: str) -> bool:
    """Whether the file at ``relative`` reaches the build, by Docker's rules: the last pattern matching the path or
    one of its parent folders decides, ``!`` re-includes."""
    rules = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _ignore_regex(line.lstrip("!").strip("/"))))
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            included = negated
    return included


# Compose


def merge(base: dict, override: dict) -> dict:
    """Compose's merge for mappings: keys of ``override`` replace or, where both are mappings, merge into ``base``."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_value(document: dict, path: tuple, value: object) -> dict:
    """A deep copy of ``document`` with the entry at ``path`` (keys and list indices) set to ``value``."""
    changed = copy.deepcopy(document)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


def compose_service(variant: str, name: str = "castream") -> dict:
    base = load_yaml(COMPOSE)["services"][name]
    if variant == "gpu":
        return merge(base, load_yaml(COMPOSE_GPU)["services"].get(name, {}))
    return base


def container_env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def duration_seconds(text: str) -> float:
    """Compose durations such as ``30s``, ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# PromQL


FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp_max", "clamp_min", "count",
    "count_over_time", "delta", "deriv", "floor", "group", "histogram_avg", "histogram_count", "histogram_quantile",
    "histogram_sum", "idelta", "increase", "irate", "label_replace", "last_over_time", "max", "max_over_time", "min",
    "min_over_time", "quantile", "quantile_over_time", "rate", "round", "scalar", "sort", "sort_desc", "stddev",
    "sum", "sum_over_time", "time", "topk", "vector",
}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
IDENTIFIER = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
TARGET_LABELS = {"instance", "job"}  # attached by Prometheus to every scraped series


@dataclass
class Exposition:
    """What a live ``/metrics`` exposed: sample names, their label names and the label values seen."""

    labels: dict[str, set[str]]
    values: dict[tuple[str, str], set[str]]


def query_problems(expr: str, live: Exposition) -> list[str]:
    """Names in ``expr`` that the live exposition lacks: metrics, label names in selectors and groupings, and
    label values in equality matchers. An empty list means the query can only fail for want of traffic."""
    problems: list[str] = []
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors, Grafana's $__rate_interval included
    metrics = []
    for name, matchers in re.findall(rf"({IDENTIFIER})\s*\{{([^}}]*)\}}", text):
        metrics.append(name)
        for label, op, value in re.findall(rf"({IDENTIFIER})\s*(=~|!~|!=|=)\s*\"([^\"]*)\"", matchers):
            if label in TARGET_LABELS:
                continue
            if label not in live.labels.get(name, set()):
                problems.append(f"{name} has no label {label!r}")
            elif op == "=" and value not in live.values.get((name, label), set()):
                problems.append(f"{name}{{{label}={value!r}}} never appeared")
    text = re.sub(r"\{[^}]*\}", "", text)
    clauses = r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)"  # aggregation groupings and vector matching
    grouped = [label for group in re.findall(clauses, text) for label in group.split(",")]
    text = re.sub(clauses, "", text)
    for word in re.findall(rf"(?<![\w.]){IDENTIFIER}", text):
        if word in FUNCTIONS or word in KEYWORDS:
            continue
        if word not in live.labels:
            problems.append(f"{word!r} is neither a PromQL function nor a metric the service exports")
        metrics.append(word)
    known = TARGET_LABELS.union(*(live.labels.get(name, set()) for name in metrics))
    problems += [f"grouping label {label.strip()!r} is on none of {metrics}" for label in grouped
                 if label.strip() not in known]  # fmt: skip
    if not metrics:
        problems.append("names no metric")
    return problems
