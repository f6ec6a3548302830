"""Speed of the TAUDIS algorithm layer (alseg.strategies.taudis_core) on random embeddings.

    python benchmarks/taudis_speed.py               # full size (targets: (a) <= 30 s, (b) <= 30 s on 2 cores)
    python benchmarks/taudis_speed.py --scale 0.1   # smaller: every count times 0.1

(a) TAUDIS diversity step: similarity graph of 20k candidates (T_C) against 200k instances (T_F),
    256-d embeddings, sigma = 0.8, then lazy greedy maximum k-set cover with k = 2000. The embeddings
    are clustered (2000 gaussian clusters around random unit directions, per-cluster spread such that
    within-cluster cosines straddle sigma) so that the graph has edges; T_C is a random subset of T_F.
(b) Core-set baseline: greedy k-center on 100k image embeddings (256-d, 200 clusters), 25% of them
    labeled (the paper's seed fraction, Sec. 4.1), budget 1000.

Peak memory is this process's ru_maxrss (monotone, so reported after the imports, after data
generation and after each phase; importing alseg pulls in torch, about 0.5 GiB). Wall and CPU
seconds are printed: on 2 free cores CPU ~ 2 x wall, less means other processes shared the cores
(the load average is printed first). The brute-force graph costs |T_C| x |T_F| x d x 2 flops
(2.0 TFLOP at full size): its time is bound by the float32 BLAS throughput, printed alongside.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def clustered(rng: np.random.Generator, n: int, d: int, n_clusters: int, spread: tuple[float, float]) -> np.ndarray:
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = rng.uniform(*spread, size=n_clusters).astype(np.float32)
    which = rng.integers(0, n_clusters, size=n)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= scale[which, None]
    x += centres[which]
    return x


def bench_graph(args, rng) -> float:
    from alseg.strategies.taudis_core import cosine_similarity_graph, greedy_max_cover

    n_all, n_query, k = int(200_000 * args.scale), int(20_000 * args.scale), max(1, int(2000 * args.scale))
    n_clusters = max(1, int(2000 * args.scale))
    # within-cluster cosine ~ 1 / (1 + d * s^2): s in [0.015, 0.04] gives ~0.95 .. 0.71 at d = 256
    emb = clustered(rng, n_all, args.dim, n_clusters, (0.015, 0.04))
    query = rng.choice(n_all, size=n_query, replace=False)
    print(f"(a) graph + cover: |T_C| = {n_query:,}, |T_F| = {n_all:,}, d = {args.dim}, {n_clusters} clusters, "
          f"sigma = {args.sigma}, k = {k}; peak RSS after data generation {_rss_mib():.0f} MiB")
    t0, c0 = time.perf_counter(), time.process_time()
    graph = cosine_similarity_graph(emb[query], emb, args.sigma, binary=True)
    t_graph, c_graph = time.perf_counter() - t0, time.process_time() - c0
    rss_graph = _rss_mib()
    t1 = time.perf_counter()
    chosen = greedy_max_cover(graph, k)
    t_cover = time.perf_counter() - t1
    total = t_graph + t_cover
    covered = np.zeros(n_all, bool)
    covered[graph[chosen].indices] = True
    flops = 2.0 * n_query * n_all * args.dim
    graph_mib = (graph.indices.nbytes + graph.data.nbytes + graph.indptr.nbytes) / 2**20
    print(f"    graph: {t_graph:.2f} s wall, {c_graph:.2f} s CPU ({flops / t_graph / 1e9:.0f} GFLOP/s float32), "
          f"{graph.nnz:,} edges ({graph.nnz / n_query:.1f} per candidate), {graph_mib:.1f} MiB; "
          f"peak RSS {rss_graph:.0f} MiB")
    print(f"    cover: {t_cover:.2f} s, {len(chosen)} chosen, {int(covered.sum()):,} of {n_all:,} instances covered; "
          f"peak RSS {_rss_mib():.0f} MiB")
    target = f" (target <= 30 s: {'met' if total <= 30 else 'MISSED'})" if args.scale == 1 else ""
    print(f"    total {total:.2f} s{target}")
    return total


def bench_coreset(args, rng) -> float:
    from alseg.strategies.taudis_core import kcenter_greedy

    n, budget = int(100_000 * args.scale), max(1, int(1000 * args.scale))
    emb = clustered(rng, n, args.dim, max(1, int(200 * args.scale)), (0.02, 0.1))
    labeled = rng.random(n) < args.labeled
    print(f"(b) core-set: {n:,} image embeddings (d = {args.dim}), {int(labeled.sum()):,} labeled, budget {budget}; "
          f"peak RSS before {_rss_mib():.0f} MiB")
    t0, c0 = time.perf_counter(), time.process_time()
    picks = kcenter_greedy(emb, labeled, budget)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    print(f"    k-center greedy: {t:.2f} s wall, {c:.2f} s CPU ({len(picks)} picks); peak RSS {_rss_mib():.0f} MiB")
    if args.scale == 1:
        print(f"    target <= 30 s: {'met' if t <= 30 else 'MISSED'}")
    return t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every count by this (default 1: full size)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--sigma", type=float, default=0.8)
    p.add_argument("--labeled", type=float, default=0.25, help="labeled fraction for the core-set part")
    p.add_argument("--only", choices=("graph", "coreset"), default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    import alseg.strategies.taudis_core  # noqa: F401,PLC0415  (importing alseg pulls in torch: ~0.5 GiB of RSS)
    print(f"load average {os.getloadavg()[0]:.2f} (other processes share these cores: wall times vary with it)")
    print(f"{os.cpu_count()} CPUs visible, numpy {np.__version__}; peak RSS after imports {_rss_mib():.0f} MiB")
    if args.only in (None, "graph"):
        bench_graph(args, rng)
    if args.only in (None, "coreset"):
        bench_coreset(args, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
