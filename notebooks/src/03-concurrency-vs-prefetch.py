# %% [markdown]
# # 03 · Concurrency vs prefetch, and what queueing theory predicts
#
# Two knobs, often confused: `concurrency` is how many messages a consumer *works on* at
# once; `prefetch` is how many more it *holds* while waiting for a worker. A sweep runs
# the same workload over a grid of both, then we hold the measurements against two
# classic results: the **Erlang C** formula for an M/M/c queue, and **Little's law**.

# %%
import numpy as np
import pandas as pd

import wqnb
from wqnb import plot

# %% [markdown]
# ## A sweep
#
# 60 messages per second (Poisson), exponential service times of 50 ms on average: one
# worker handles 20/s, so at least 3 workers are needed to keep up.

# %%
workload = dict(messages=2000, arrival_rate=60.0, service_time=wqnb.Exponential(0.05),
                seed=1)
results = wqnb.sweep(concurrency=(1, 2, 4, 8, 16), prefetch=(1, 10, 100), **workload)
results[["concurrency", "prefetch", "throughput_per_s", "latency_p50_s", "latency_p99_s",
         "utilisation"]].round(3)

# %% [markdown]
# Heatmaps (one cell a run) and lines (one per concurrency):

# %%
fig = plot.sweep(results, ("throughput_per_s", "latency_p99_s"))

# %% [markdown]
# * Below 3 workers the consumer cannot keep up: throughput is capped at 20/s per
#   worker and latency grows with the backlog.
# * From 4 workers on, throughput is the arrival rate and latency falls quickly; past
#   about 8 workers more of them buy little.
# * With **one consumer** and an in-memory queue, `prefetch` barely matters: it only
#   moves the waiting from the queue into the consumer's buffer (`queue_wait_mean_s` vs
#   `buffer_wait_mean_s` below). It matters when fetching costs a network round trip,
#   and when several consumers share a queue: a message in one consumer's buffer is not
#   available to the others.

# %%
results[results["concurrency"] == 4][["prefetch", "queue_wait_mean_s",
                                      "buffer_wait_mean_s", "latency_mean_s"]].round(4)

# %% [markdown]
# ## Erlang C: the M/M/c prediction
#
# With Poisson arrivals (λ per second), exponential service (μ per second per worker) and
# c workers, queueing theory gives the probability that a message has to wait and its
# mean wait, `Wq`. Here "waiting" is queue *plus* buffer: both are time before a worker
# starts. Longer runs (20,000 messages) get closer to the steady state.

# %%
lam, mean_service = 60.0, 0.05
rows = []
for c in (4, 5, 8):
    tl = wqnb.simulate(concurrency=c, prefetch=10, messages=20_000, arrival_rate=lam,
                       service_time=wqnb.Exponential(mean_service), seed=2)
    m = tl.messages()
    wait = m["queue_wait"] + m["buffer_wait"]
    theory = wqnb.erlang_c(c, lam, 1 / mean_service)
    rows.append({
        "workers c": c,
        "utilisation ρ": theory.utilisation,
        "P(wait) predicted": theory.p_wait,
        "P(wait) measured": (wait > 1e-9).mean(),
        "Wq predicted (s)": theory.wait,
        "Wq measured (s)": wait.mean(),
    })
pd.DataFrame(rows).set_index("workers c").round(4)

# %% [markdown]
# ## Little's law on the timeline
#
# For any stable system, the average number of messages inside it (L) is the arrival
# rate (λ) times the average time each spends inside (W): **L = λ W**. The timeline gives
# all three independently: L from the gauges (ready in the queue + unsettled, averaged over
# time), λ from the publishes, W from each message's publish → ack.

# %%
tl = wqnb.simulate(concurrency=4, prefetch=10, messages=20_000, arrival_rate=lam,
                   service_time=wqnb.Exponential(mean_service), seed=3)
g = tl.gauges()
in_system = (g["depth"] + g["unsettled"]).to_numpy(dtype=float)
dt = np.diff(g["t"].to_numpy(), append=g["t"].iloc[-1])
s = tl.summary()
L = (in_system * dt).sum() / s["duration_s"]
lam_measured = s["published"] / s["duration_s"]
W = s["latency_mean_s"]
print(f"L         = {L:.3f} messages (time-average, from the gauges)")
print(f"λ × W     = {lam_measured:.2f}/s × {W:.4f} s = {lam_measured * W:.3f} messages")

# %% [markdown]
# ## Try it
#
# * Sweep `prefetch` with a heavy-tailed service time, `wqnb.LogNormal(0.05, sigma=1.5)`:
#   does the p99 latency still ignore prefetch?
# * Compute the Erlang C prediction for c = 3 (ρ = 1): what does `wqnb.erlang_c` say, and
#   what does the simulation's queue do?
# * Next: **04-failures** — nacks, retries, dead letters, and stopping without losing anything.
