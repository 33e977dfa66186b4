# %% [markdown]
# # 04 · Failures: nack, requeue, attempts, dead letters, timeouts, and a clean stop
#
# A handler that raises (Python) or returns `nil, err` (Lua) **nacks** its message: the
# message goes back to the tail of its queue with `attempt + 1`, and is delivered again.
# Wippy keeps retrying forever; wqnb counts the attempts, and a queue entry's
# `dead_letter: {queue, max_attempts}` moves a message that keeps failing aside.

# %%
import asyncio
import json

import pandas as pd

import wqnb
from wqnb import plot

# %% [markdown]
# ## Random failures, three attempts
#
# Each delivery fails with probability 0.2; after 3 failed deliveries the message goes
# to the dead-letter queue. 0.2³ = 0.8 % of messages should end there.

# %%
tl = wqnb.simulate(concurrency=4, prefetch=10, messages=1000, arrival_rate=60.0,
                   service_time=0.05, failure_rate=0.2, max_attempts=3, seed=1)
tl.summary()[["published", "delivered", "acked", "nacked", "requeued",
              "dead_lettered"]].astype(int)

# %% [markdown]
# Every delivery attempt is a row of `messages()`: how did first, second and third
# attempts end?

# %%
m = tl.messages()
pd.crosstab(m["attempt"], m["outcome"])

# %% [markdown]
# In the Gantt, red bars are nacks, hatched bars are retries, and ✕ marks where a message
# was dead-lettered:

# %%
dead_at = tl.df.loc[tl.df["event"] == "dead_letter", "t"].min()
ax = plot.gantt(tl, start=dead_at - 1.0, end=dead_at + 0.5)

# %% [markdown]
# Follow one dead-lettered message across the lanes: `highlight=` outlines each of its
# attempts in red and joins them, from the worker that failed it to the next one.

# %%
dead_id = tl.df.loc[tl.df["event"] == "dead_letter", "msg_id"].iloc[0]
first_try = tl.messages().query("msg_id == @dead_id")["t_start"].min()
ax = plot.gantt(tl, start=first_try - 0.3, end=dead_at + 0.3, highlight=dead_id)

# %% [markdown]
# Its whole story, event by event:

# %%
story = tl.df[tl.df["msg_id"] == dead_id]
story.assign(t=story["t"].round(3))[["t", "event", "queue", "worker", "attempt", "error"]]

# %% [markdown]
# ## A poison message
#
# Random failures pass on a retry; a **poison message** fails every time (a body the
# handler cannot parse). Without `max_attempts` it would be redelivered forever and take
# a worker each time. Here order 13 is poison, in an app of our own with a Python handler:

# %%
APP = """
namespace: shop
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - name: orders
    kind: queue.queue
    driver: shop:mem
    dead_letter: {queue: shop:orders_dead, max_attempts: 3}
  - {name: orders_dead, kind: queue.queue, driver: shop:mem}
  - name: order_worker
    kind: queue.consumer
    queue: shop:orders
    func: shop:handle_order
    concurrency: 2
    prefetch: 5
    lifecycle: {auto_start: true}
"""

async def handle_order(body):
    order = json.loads(body)
    await asyncio.sleep(0.02)
    if order["id"] == 13:
        raise ValueError(f"order {order['id']}: total is not a number")

tl = wqnb.simulate(app=APP, queue="shop:orders", handlers={"shop:handle_order": handle_order},
                   messages=30, arrival_rate=50.0, body=lambda i: {"id": i}, seed=1)
m = tl.messages()
m[m["outcome"] == "nack"][["attempt", "outcome", "dead_lettered", "error"]]

# %% [markdown]
# The dead-letter queue keeps it for a person (or another consumer) to look at:

# %%
tl.df[tl.df["event"] == "dead_letter"][["event", "queue", "attempt"]]

# %% [markdown]
# In the Gantt, the poison message's three attempts (outlined, and joined across the
# two workers) stand among the acks; the ✕ is where it left for the dead-letter queue.
# With 30 messages every bar carries its number.

# %%
poison = tl.df.loc[tl.df["event"] == "dead_letter", "msg_id"].iloc[0]
ax = plot.gantt(tl, highlight=poison)

# %% [markdown]
# ## A poison message with no dead-letter queue: seen, not looped forever unseen
#
# Wippy sets no delivery limit, and neither does wqnb: without `dead_letter` the poison
# message goes round for ever. But not unseen. Logger `wqnb.consumer` warns once when its
# deliveries reach 10, 100, 1000…; `drain(timeout=…)` fails naming the messages still
# cycling, with their attempts and last error; `summary()` counts them as
# `poison_messages`. (Orders get ids of their own here: `publish(..., id="order-13")`.)

# %%
NO_DLQ = (APP.replace("    dead_letter: {queue: shop:orders_dead, max_attempts: 3}\n", "")
             .replace("    prefetch: 5\n", "    prefetch: 5\n    requeue_delay: 100ms\n"))

async def poison_run():
    rt = wqnb.Runtime.from_yaml_string(NO_DLQ)
    rt.register_function("shop:handle_order", handle_order)
    await rt.start()
    for i in (12, 13, 14):
        await rt.publish("shop:orders", {"id": i}, id=f"order-{i}")
    try:
        await rt.drain(timeout=3)
    except TimeoutError as e:
        print(e)
    await rt.stop()
    return rt.timeline

tl = wqnb.run_virtual(poison_run())
print("poison messages:", int(tl.summary()["poison_messages"]))

# %% [markdown]
# ## A requeue delay
#
# Retrying at once hammers whatever failed. The consumer's `requeue_delay` waits before
# the message is ready again; the latency of the retried messages shows it.

# %%
rows = {}
for delay in (None, 0.5):
    tl = wqnb.simulate(concurrency=4, prefetch=10, messages=1000, arrival_rate=60.0,
                       service_time=0.05, failure_rate=0.2, max_attempts=3,
                       requeue_delay=delay, seed=1)
    rows[f"requeue_delay {delay or 0} s"] = tl.summary().as_row()
pd.DataFrame.from_dict(rows, orient="index")[["acked", "dead_lettered", "latency_p50_s",
                                              "latency_p99_s"]].round(3)

# %% [markdown]
# ## Handler timeouts
#
# A consumer's `timeout` cancels a handler that runs too long and nacks its message.
# Service times here are exponential with a 50 ms mean, and the timeout is 150 ms: about
# e⁻³ ≈ 5 % of deliveries are cut off (and retried, with a fresh service time).

# %%
tl = wqnb.simulate(concurrency=4, prefetch=10, messages=1000, arrival_rate=60.0,
                   service_time=wqnb.Exponential(0.05), timeout=0.15, max_attempts=3,
                   seed=1)
m = tl.messages()
print(f"{(m['outcome'] == 'nack').mean():.1%} of deliveries timed out")
m.loc[m["outcome"] == "nack", "error"].value_counts()

# %% [markdown]
# ## A graceful stop loses nothing
#
# Stop an overloaded consumer mid-run (`until=5.0`: the run is stopped at t = 5 s). The
# consumer stops taking messages, lets running handlers finish, and hands its buffered
# messages back to the **head** of the queue, in order. Every message's last event is
# then `ack` (done) or still ready in the queue (`publish` or `requeue`) — none is lost
# in a buffer.

# %%
tl = wqnb.simulate(concurrency=4, prefetch=50, messages=1000, arrival_rate=200.0,
                   service_time=0.05, seed=1, until=5.0)
last = tl.df.groupby("msg_id", observed=True)["event"].last().astype(str)
last.value_counts()

# %%
s = tl.summary()
ready = last.isin(["publish", "requeue"]).sum()
never = (last == "publish_cancelled").sum()  # a publish still waiting at the stop: never stored
print(f"published {s['published']:.0f} = acked {s['acked']:.0f} + back in the queue {ready}"
      + (f" ({never} more were still waiting to be published)" if never else ""))
handed_back = tl.df[(tl.df["event"] == "requeue") & (tl.df["t"] >= 5.0)]
print(f"{len(handed_back)} buffered messages were handed back when the consumer stopped")

# %% [markdown]
# ## Try it
#
# * Set `failure_rate=1.0` with `max_attempts=1`: what does the Gantt look like?
# * Give the poison-message app a consumer on `shop:orders_dead` that logs what arrives.
# * Without `max_attempts`, a poison message on virtual time is retried forever at the
#   same instant: why does the simulation never finish? (Don't run it.)
# * Next: **05-lua-handlers**.
