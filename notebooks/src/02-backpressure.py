# %% [markdown]
# # 02 · Backpressure: when messages arrive faster than they are handled
#
# A consumer has three places a message can be: **ready in the queue**, **in the prefetch
# buffer** (taken from the queue, waiting for a worker) and **in service** (a worker runs
# the handler). Each has a limit: the queue's `max_length`, the consumer's `prefetch` and
# its `concurrency`. When arrivals outpace the workers, the places fill up in a fixed
# order — buffer, workers, queue — and then the last one pushes back on the publisher.
# That push is **backpressure**.

# %%
import pandas as pd

import wqnb
from wqnb import plot

# %% [markdown]
# ## An overloaded consumer
#
# Four workers, each message takes 50 ms: they can handle 4 / 0.05 = 80 messages per
# second. We publish 120 per second (Poisson arrivals), into a queue that holds 200.

# %%
base = dict(concurrency=4, prefetch=10, messages=2000, arrival_rate=120.0,
            service_time=0.05, max_length=200, seed=1)
tl = wqnb.simulate(**base)
tl.summary()[["published", "acked", "duration_s", "throughput_per_s", "max_depth",
              "publish_waits", "publish_wait_total_s"]].round(2)

# %% [markdown]
# Throughput is capped at the workers' 80/s, whatever the arrival rate. The picture: the
# queue (top) and the consumer (bottom), with each gauge's limit as a dashed line of its
# colour, and the stretches where the publisher was blocked shaded red.

# %%
fig = plot.backpressure(tl)

# %% [markdown]
# ## Replay: the system at any instant
#
# Press **Play** (or drag the slider) to watch the run: the publisher, the ready
# messages in the queue, the consumer's prefetch buffer, each worker with the message it
# holds, and the counts so far. Watch the buffer fill, then the workers, then the queue
# — and the publisher turn red when the queue is full: backpressure. The picture is
# read back from the timeline (`wqnb.replay.state_at`), so it works on any run.

# %%
from wqnb.widgets import Replay

replay = Replay(tl, start=0, end=6, frames=121)
replay.seek(5.0)
replay

# %% [markdown]
# The same state as data, five seconds in:

# %%
snap = replay.snapshot
print(f"t = {snap.t:.2f} s: queue {snap.depth}/{snap.max_length}, buffer "
      f"{snap.buffered}/{snap.prefetch}, busy {snap.busy}/{snap.concurrency}, "
      f"publisher {'blocked' if snap.publisher_waiting else 'not waiting'}, acked {snap.acked}")

# %% [markdown]
# ## The order things fill up in
#
# Zoom on the first three seconds. First the **buffer** fills to `prefetch` (yellow);
# the **workers** are all busy (green at `concurrency`); `unsettled` sits at
# `prefetch + concurrency`, the most a consumer ever holds. Only then does the **queue**
# grow, until it reaches `max_length` and the publisher has to wait.

# %%
fig = plot.backpressure(tl, start=0, end=3)

# %% [markdown]
# ## Turning each knob
#
# Same arrivals (same seed), one change at a time:

# %%
variants = {
    "baseline": {},
    "concurrency 8": {"concurrency": 8},
    "prefetch 1000": {"prefetch": 1000},
    "max_length 20": {"max_length": 20},
    "arrivals 60/s": {"arrival_rate": 60.0},
}
rows = {name: wqnb.simulate(**{**base, **change}).summary().as_row()
        for name, change in variants.items()}
cols = ["throughput_per_s", "latency_p50_s", "latency_p99_s", "max_depth", "max_unsettled",
        "publish_waits", "publish_wait_total_s"]
pd.DataFrame.from_dict(rows, orient="index")[cols].round(2)

# %% [markdown]
# * **More workers** (`concurrency 8`, 160/s of capacity) is the only change that removes
#   the overload: no queue, no waiting publisher, low latency.
# * **A bigger prefetch** *hides* the overload: the publisher stops waiting and the queue
#   looks empty, but throughput is the same and latency gets much worse. Look where the
#   messages went:

# %%
fig = plot.backpressure(wqnb.simulate(**{**base, "prefetch": 1000}), start=0, end=12)

# %% [markdown]
# The queue looks **empty** while hundreds of messages sit unsettled in the consumer's
# buffer — RabbitMQ users know this as "the queue is empty but
# nothing gets done". A message in a buffer cannot go to another consumer, and is
# redelivered only if this one stops or dies.
#
# * **A shorter queue** (`max_length 20`) pushes back on the publisher sooner and longer;
#   latency goes *down*, because less is waiting in front of each message.
# * **Fewer arrivals** (60/s, below capacity) and there is nothing to push back.

# %% [markdown]
# ## The pictures RabbitMQ and Flower show
#
# RabbitMQ's management page for a queue draws two charts: *queued messages* (Ready and
# Unacked, stacked: the top is all the queue holds) and *message rates*. The same from
# the timeline, for the overloaded run and for the one with `prefetch: 1000`, where the
# "empty" queue is all Unacked:

# %%
fig = plot.rabbitmq(tl)

# %%
fig = plot.rabbitmq(wqnb.simulate(**{**base, "prefetch": 1000}))

# %% [markdown]
# Celery's Flower shows a table of workers; `wqnb.replay.workers` is that table for a
# consumer: what each worker handled, how busy it was, and what it holds (at the end
# of a run: nothing).

# %%
wqnb.replay.workers(tl).round(3)

# %% [markdown]
# ## Latency: where the time goes
#
# Per delivery: time in the queue, in the prefetch buffer, in service. Overloaded, almost
# all of it is waiting.

# %%
fig = plot.latency_split(tl)

# %% [markdown]
# ## Explore
#
# Move the sliders: each move re-runs the simulation (virtual time, under a second) and
# redraws. The widget needs a live kernel; in a static view you see its last state.

# %%
from wqnb.widgets import Explorer

Explorer(**base, distribution="constant")

# %% [markdown]
# ## Try it
#
# * With the Explorer: find the smallest `concurrency` at which the publisher never waits.
#
# <details><summary>Answer</summary>
#
# 6: `wqnb.simulate(**{**base, "concurrency": 6}).summary()["publish_waits"]` is 0, and 5
# gives 327. Six workers handle exactly the 120/s that arrive (ρ = 1): in the long run
# that queue grows without bound, but in 2,000 messages it only wanders, and never
# reaches the 200 that would stop the publisher.
# </details>
#
# * Set `max_length` to 1: what is the publisher's total waiting time, and why is the
#   throughput still 80/s?
#
# <details><summary>Answer</summary>
#
# `wqnb.simulate(**{**base, "max_length": 1}).summary()["publish_wait_total_s"]` is about
# 9 s: the queue is nearly always full, so most publishes wait. Throughput is set by the
# workers (4 / 0.05 s = 80/s), and they are never starved: the buffer (`prefetch` 10)
# still holds the next messages.
# </details>
#
# * Next: **03-concurrency-vs-prefetch** — sweeping both knobs, and queueing theory.
