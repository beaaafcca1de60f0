"""The dependency taxonomy (Beyond IID, step 3): a DAG of categories and the stages it implies.

From config, `prerequisites` maps a category to the categories it builds on. Derived from a benefit
matrix B (B[j][k] = how much training on k helps j): k is a prerequisite of j when k helps j and
clearly more than j helps k, B[j][k] > 0 and B[j][k] - B[k][j] > threshold x (the largest absolute
off-diagonal benefit), so the threshold does not depend on the estimate's units. Cycles are broken
by a stated rule: edges are added strongest margin first and an edge that would close a cycle is
dropped (and reported).

Stages are the DAG's layers: a category's stage is one more than its latest prerequisite's, so a
stage holds the categories whose prerequisites all came earlier (those without any come first).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from ct_train.errors import ConfigError

Edge = Tuple[str, str, float]  # (prerequisite, dependent, margin)


def _reaches(graph: Dict[str, List[str]], src: str, dst: str) -> bool:
    seen, todo = set(), [src]
    while todo:
        node = todo.pop()
        if node == dst:
            return True
        if node not in seen:
            seen.add(node)
            todo += graph.get(node, [])
    return False


def derive_prerequisites(
    benefit: np.ndarray, categories: List[str], threshold: float
) -> Tuple[Dict[str, List[str]], List[Edge], List[Edge]]:
    """(prerequisites, kept edges, edges dropped to break cycles) from a K x K benefit matrix."""
    b = np.asarray(benefit, dtype=np.float64)
    off = ~np.eye(len(categories), dtype=bool)
    scale = float(np.abs(b[off]).max()) if off.any() else 0.0
    candidates: List[Edge] = []
    if scale > 0:
        for j, dep in enumerate(categories):
            for k, pre in enumerate(categories):
                margin = b[j, k] - b[k, j]
                if j != k and b[j, k] > 0 and margin > threshold * scale:
                    candidates.append((pre, dep, float(margin)))
    candidates.sort(key=lambda e: (-e[2], categories.index(e[0]), categories.index(e[1])))
    forward: Dict[str, List[str]] = {}  # prerequisite -> dependents
    kept, dropped = [], []
    for pre, dep, margin in candidates:
        if _reaches(forward, dep, pre):  # dep already leads to pre: this edge would close a cycle
            dropped.append((pre, dep, margin))
            continue
        forward.setdefault(pre, []).append(dep)
        kept.append((pre, dep, margin))
    prerequisites = {c: [pre for pre, dep, _ in kept if dep == c] for c in categories}
    return prerequisites, kept, dropped


def check_prerequisites(prerequisites: Dict[str, List[str]], categories: List[str], key: str) -> None:
    """ConfigError naming an unknown category or a cycle (as a path) in a configured DAG."""
    for dep, pres in prerequisites.items():
        for name in [dep, *pres]:
            if name not in categories:
                raise ConfigError(f"{key}: unknown category {name!r}; the data has {categories}")
    forward: Dict[str, List[str]] = {}
    for dep, pres in prerequisites.items():
        for pre in pres:
            forward.setdefault(pre, []).append(dep)
    for dep, pres in prerequisites.items():
        for pre in pres:
            if _reaches(forward, dep, pre):
                path = _path(forward, dep, pre)
                raise ConfigError(f"{key} has a cycle: {' -> '.join([pre, *path])}")


def _path(graph: Dict[str, List[str]], src: str, dst: str) -> List[str]:
    parents, todo = {src: None}, [src]
    while todo:
        node = todo.pop(0)
        if node == dst:
            break
        for nxt in graph.get(node, []):
            if nxt not in parents:
                parents[nxt] = node
                todo.append(nxt)
    out, node = [], dst
    while node is not None:
        out.append(node)
        node = parents[node]
    return out[::-1]


def layers(prerequisites: Dict[str, List[str]], categories: List[str]) -> List[List[str]]:
    """Categories by stage (topological layers, each in `categories` order); the DAG must be acyclic."""
    depth: Dict[str, int] = {}

    def level(c: str, trail: Tuple[str, ...] = ()) -> int:
        if c not in depth:
            if c in trail:
                raise ConfigError(f"dependency cycle: {' -> '.join([*trail, c])}")
            pres = [p for p in prerequisites.get(c, []) if p in categories]
            depth[c] = 1 + max((level(p, trail + (c,)) for p in pres), default=-1)
        return depth[c]

    for c in categories:
        level(c)
    n = max(depth.values()) + 1 if depth else 0
    return [[c for c in categories if depth[c] == d] for d in range(n)]
