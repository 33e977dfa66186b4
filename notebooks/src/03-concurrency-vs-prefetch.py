# %% [markdown]
# # 03 · Concurrency vs prefetch, and what queueing theory predicts
#
# Two knobs, often confused: `concurrency` is how many messages a consumer *works on* at
# once; `prefetch` is how many more it *holds* while waiting for a worker. A sweep runs
# the same workload over a grid of both, then we hold the measurements against two
# classic results: the **Erlang C** formula for an M/M/c queue, and **Little's law**.

# %%
import asyncio

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

import wqnb
from wqnb import plot
from wqnb.widgets import Sweep

# %% [markdown]
# ## A sweep
#
# 60 messages per second (Poisson), exponential service times of 50 ms on average: one
# worker handles 20/s, so at least 3 workers are needed to keep up. `wqnb.sweep` runs
# every cell of the grid on its own (one process per core here; `executor=` takes any
# `concurrent.futures.Executor`, a Dask cluster's too) and gives one summary row a run —
# the same rows, in the same order, as a serial run.

# %%
workload = dict(messages=2000, arrival_rate=60.0, service_time=wqnb.Exponential(0.05),
                seed=1)
results = wqnb.sweep(concurrency=(1, 2, 4, 8, 16), prefetch=(1, 10, 100), **workload)
results[["concurrency", "prefetch", "throughput_per_s", "latency_p50_s", "latency_p99_s",
         "utilisation"]].round(3)

# %% [markdown]
# Heatmaps (one cell a run) and lines (one per concurrency). Each heatmap has its own
# colour scale, and yellow always means *good*: high throughput on the left, low latency
# on the right (its scale is logarithmic: latency spans four decades here).

# %%
fig = plot.sweep(results, ("throughput_per_s", "latency_p99_s"))

# %% [markdown]
# * Below 3 workers the consumer cannot keep up: throughput is capped at 20/s per
#   worker and latency grows with the backlog.
# * From 4 workers on, throughput is the arrival rate and latency falls quickly; past
#   about 8 workers more of them buy little.
# * **Why 62.6/s and not 60/s?** Throughput is acks divided by the run's duration, and a
#   finite run of random arrivals does not arrive at exactly 60/s: these 2,000 arrived
#   in a little less time than 2,000 / 60 = 33.3 s. Count them:

# %%
arrivals = wqnb.simulate(concurrency=8, prefetch=10, **workload)
t_last = arrivals.df.loc[arrivals.df["event"] == "publish", "t"].max()
print(f"2000 arrivals in {t_last:.2f} s: {2000 / t_last:.1f}/s "
      f"(one Poisson run of 2000 is within ±{100 * 2000 ** -0.5:.1f} % of 60/s, one time in 3)")

# %% [markdown]
# * With **one consumer** and an in-memory queue, `prefetch` barely matters: it only
#   moves the waiting from the queue into the consumer's buffer (`queue_wait_mean_s` vs
#   `buffer_wait_mean_s` below). It matters when fetching costs a network round trip,
#   and when several consumers share a queue — next section.

# %%
results[results["concurrency"] == 4][["prefetch", "queue_wait_mean_s",
                                      "buffer_wait_mean_s", "latency_mean_s"]].round(4)

# %% [markdown]
# * **Why does p99 grow with prefetch at c = 1?** One worker (20/s) gets 60/s: the
#   backlog grows until the queue's `max_length` (1,000 by default, easy to forget) is
#   full, and from then on the *publisher* waits. Saturated, the system holds
#   `max_length + prefetch + concurrency` messages, and by Little's law each waits about
#   that many divided by the throughput: 1,002 / 20 = 50 s at prefetch 1, 1,101 / 20 = 55 s
#   at prefetch 100. A bigger prefetch is a longer line in front of the worker.
# * Latency counts from the **publish**. Latency from the message's **arrival**
#   (`e2e_latency_*`, from `messages()`' `t_arrival`: its `publish_wait` when the queue was
#   full) adds the time the blocked publisher held it. Here that is small, because this
#   publisher is one loop: while it waits, it makes no new arrivals.

# %%
results[results["concurrency"] == 1][["prefetch", "latency_p99_s", "e2e_latency_p99_s",
                                      "publish_waits"]].round(2)

# %% [markdown]
# ## Fair dispatch: competing consumers and prefetch
#
# RabbitMQ's classic prefetch lesson. Two consumers read one queue: a fast one (10 ms a
# message) and a slow one (200 ms). 200 messages are waiting. With `prefetch: 1` each
# consumer holds one message at a time, so the fast one takes a new message every 10 ms
# and does almost all the work. With `prefetch: 100` the queue is split 100 / 100 at once,
# and the fast consumer sits idle while the slow one works through its half.

# %%
FAIR = """
namespace: fair
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: jobs, kind: queue.queue, driver: fair:mem, options: {max_length: 1000}}
  - {name: fast, kind: queue.consumer, queue: fair:jobs, func: fair:fast_fn,
     concurrency: 1, prefetch: PREFETCH, lifecycle: {auto_start: true}}
  - {name: slow, kind: queue.consumer, queue: fair:jobs, func: fair:slow_fn,
     concurrency: 1, prefetch: PREFETCH, lifecycle: {auto_start: true}}
"""


async def fast(body):
    await asyncio.sleep(0.01)


async def slow(body):
    await asyncio.sleep(0.2)


fair = {}
for prefetch in (1, 100):
    fair[prefetch] = wqnb.simulate(
        app=FAIR.replace("PREFETCH", str(prefetch)), queue="fair:jobs", messages=200,
        arrival_rate=None, handlers={"fair:fast_fn": fast, "fair:slow_fn": slow})
pd.DataFrame([{
    "prefetch": p,
    "handled by fast": int((tl.messages()["consumer"] == "fair:fast").sum()),
    "handled by slow": int((tl.messages()["consumer"] == "fair:slow").sum()),
    "all done after (s)": round(tl.summary()["duration_s"], 2),
} for p, tl in fair.items()]).set_index("prefetch")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True, layout="constrained")
for ax, (p, tl) in zip(axes, fair.items()):
    m = tl.messages()
    for name, color in (("fair:fast", "#2a9d8f"), ("fair:slow", "#e76f51")):
        done = np.sort(m.loc[m["consumer"] == name, "t_end"].to_numpy())
        ax.step(np.r_[0, done], np.arange(len(done) + 1), where="post", color=color,
                label=f"{name.split(':')[1]}: {len(done)}")
    ax.set_title(f"prefetch {p}: done after {tl.summary()['duration_s']:.1f} s", loc="left",
                 fontsize="medium")
    ax.set_xlabel("time (s)")
    ax.legend(fontsize="small", loc="lower right")
_ = axes[0].set_ylabel("messages handled")

# %% [markdown]
# Prefetch 1 drains the queue in 2.2 s (189 / 11); prefetch 100 takes 20 s. A large
# prefetch is cheap throughput for one consumer, and unfair when consumers differ.

# %% [markdown]
# ## The same grid in a widget
#
# `Sweep` runs a grid from its text boxes (press *Run sweep*; here we call `run()` so the
# saved notebook shows the result).

# %%
sw = Sweep(concurrency=(1, 2, 4, 8), prefetch=(1, 10, 100), messages=1000,
           arrival_rate=60.0, service_time=wqnb.Exponential(0.05), seed=1)
_ = sw.run()
sw

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
# ## The theory curve, and the spread of a finite run
#
# Erlang C gives the mean wait for any load. Below: its curves for 1, 2, 4 and 8 workers,
# and simulated runs at four loads each, three seeds per point (mean, and a bar from the
# lowest to the highest seed). Near ρ = 1 the wait explodes, and runs of the same
# workload disagree more: a few slow stretches make the whole backlog.

# %%
mu = 1 / mean_service
points = []
for c in (1, 2, 4, 8):
    for rho in (0.3, 0.5, 0.7, 0.85):
        for seed in (1, 2, 3):
            tl = wqnb.simulate(concurrency=c, prefetch=1, messages=4000, arrival_rate=rho * c * mu,
                               service_time=wqnb.Exponential(mean_service), seed=seed)
            m = tl.messages()
            points.append({"servers": c, "utilisation": rho, "seed": seed,
                           "wait": (m["queue_wait"] + m["buffer_wait"]).mean()})
measured = pd.DataFrame(points)
ax = plot.erlang_c_curves(measured, service_rate=mu)

# %%
spread = measured.groupby(["servers", "utilisation"])["wait"].agg(["mean", "min", "max"])
spread["theory"] = [wqnb.erlang_c(c, r * c * mu, mu).wait for c, r in spread.index]
spread.round(4)

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
#
# <details><summary>Answer</summary>
#
# `wqnb.sweep(concurrency=(4,), prefetch=(1, 10, 100), messages=2000, arrival_rate=60.0,
# service_time=wqnb.LogNormal(0.05, sigma=1.5))`. With one consumer, yes, mostly: p99 is set
# by the rare very long services and the backlog behind them, and the buffer only moves
# that backlog from the queue into the consumer. With two consumers it would not
# (fair dispatch, above).
# </details>
#
# * Compute the Erlang C prediction for c = 3 (ρ = 1): what does `wqnb.erlang_c` say, and
#   what does the simulation's queue do?
#
# <details><summary>Answer</summary>
#
# `wqnb.erlang_c(3, 60, 20)` raises `ValueError: unstable: utilisation λ/(cμ) = 1.000 ≥ 1`:
# at ρ = 1 there is no steady state. `wqnb.simulate(concurrency=3, arrival_rate=60.0,
# service_time=wqnb.Exponential(0.05), messages=5000)` shows the queue wandering ever
# higher (a random walk with no pull back), until `max_length` stops the publisher.
# </details>
#
# * In the fair-dispatch app, which prefetch drains the queue fastest when both consumers
#   are equally fast?
#
# <details><summary>Answer</summary>
#
# Make `slow` sleep 10 ms too: every prefetch splits the work 100 / 100 and drains in
# about 1 s. Prefetch only matters when consumers differ (or fetching costs a round trip).
# </details>
#
# * Next: **04-failures** — nacks, retries, dead letters, and stopping without losing anything.
