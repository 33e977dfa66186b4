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
rows = {name: wqnb.simulate(**{**base, **change}).summary() for name, change in variants.items()}
cols = ["throughput_per_s", "latency_p50_s", "latency_p99_s", "max_depth", "max_unsettled",
        "publish_waits", "publish_wait_total_s"]
pd.DataFrame(rows).T[cols].round(2)

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
# * Set `max_length` to 1: what is the publisher's total waiting time, and why is the
#   throughput still 80/s?
# * Next: **03-concurrency-vs-prefetch** — sweeping both knobs, and queueing theory.
