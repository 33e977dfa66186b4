# %% [markdown]
# # 06 · Live: a real-time runtime in this kernel, watched as it runs
#
# Until now every run was simulated on virtual time. Here the runtime runs for real, in
# the kernel's own asyncio loop: it keeps running **between cells**, handlers really
# sleep, and the `LiveMonitor` widget redraws the gauges while messages flow — without
# blocking the notebook. Buttons publish a burst and stop the runtime.
#
# Real time is not reproducible: the cells whose output depends on timing are marked
# `# NBVAL_IGNORE_OUTPUT` so that the test run does not compare them.

# %%
import asyncio

import wqnb
from wqnb import plot
from wqnb.widgets import LiveMonitor

APP = """
namespace: live
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - name: jobs
    kind: queue.queue
    driver: live:mem
    options: {max_length: 30}
  - name: workers
    kind: queue.consumer
    queue: live:jobs
    func: live:handler
    concurrency: 3
    prefetch: 5
    lifecycle: {auto_start: true}
"""


async def handler(body):
    await asyncio.sleep(0.05)   # 50 ms of "work": 3 workers handle 60 messages/s


rt = wqnb.Runtime.from_yaml_string(APP)
rt.register_function("live:handler", handler)
await rt.start()
rt.state

# %% [markdown]
# The monitor starts an asyncio task that redraws every half second while new events
# arrive. Press **Publish burst**: 150 messages go to a queue that holds 30, so the burst
# itself waits (backpressure) while the buffer, the workers and the queue fill up.

# %%
monitor = LiveMonitor(rt, burst=150, interval=0.5)
monitor

# %% [markdown]
# The same from code: `publish_burst` returns at once (the burst is a task), and the
# kernel is free — this cell finishes while messages are still flowing.

# %%
burst = monitor.publish_burst(150)
await asyncio.sleep(0.5)
print("burst finished publishing?", burst.done())

# %% [markdown]
# Wait for the burst and the consumer (awaiting lets the loop run everything else):

# %%
await burst
await rt.drain()
s = rt.timeline.summary()
print(f"published {s['published']:.0f}, acked {s['acked']:.0f}")

# %% [markdown]
# The picture the monitor drew (it changes with every run: real time):

# %%
# NBVAL_IGNORE_OUTPUT
monitor.refresh()
fig = plot.backpressure(rt.timeline)

# %% [markdown]
# ## Stopping mid-burst: nothing is lost
#
# A second runtime of the same app, with its own monitor. Publish a burst of 450 and
# stop while it is still publishing — what **Stop** does. The monitor first stops the
# bursts (the messages not yet published are counted, not sent), then stops the
# runtime: running handlers finish, and what sat in the prefetch buffer is **handed
# back** to the queue. The status line says how many of each.

# %%
rt2 = wqnb.Runtime.from_yaml_string(APP)
rt2.register_function("live:handler", handler)
await rt2.start()
monitor2 = LiveMonitor(rt2, burst=450, interval=0.5)
_ = monitor2.publish_burst()
await asyncio.sleep(1.0)          # some handled, some queued, the rest not yet published
await monitor2.stop()

# %%
# NBVAL_IGNORE_OUTPUT
print(monitor2.status.value)      # real time: the split changes from run to run

# %% [markdown]
# Whatever the timing, every message asked for is accounted for: published or never
# sent, and every published one acked or back in the queue — none lost in a buffer.

# %%
last = rt2.timeline.df.groupby("msg_id", observed=True)["event"].last().astype(str)
s2 = rt2.timeline.summary()
print("asked for:", monitor2.published + monitor2.cancelled)
print("published = acked + back in the queue:",
      int(s2["published"]) == int((last == "ack").sum() + last.isin(["requeue", "publish"]).sum()))
print("handed back shown in the status:",
      monitor2.handed_back == 0 or "handed back" in monitor2.status.value)
print("runtime:", rt2.state)

# %% [markdown]
# ## Your turn: the first monitor is still live
#
# The runtime `rt` of the first monitor is still running, and its monitor still follows
# it: scroll up, press **Publish burst** (twice quickly, to see the publisher wait), then
# **Stop runtime**. Or from code: `monitor.publish_burst(150)`, `await monitor.stop()`.

# %%
rt.state, monitor.task is not None and not monitor.task.done()

# %% [markdown]
# ## Try it
#
# * Press *Publish burst* twice quickly: what happens to the publisher waits?
#
# <details><summary>Answer</summary>
#
# Two bursts publish at once into a queue of 30: both wait, taking turns as space frees
# up; `publish_waits` roughly doubles, and the shaded (publisher waiting) stretch lasts
# twice as long, since the 3 workers still handle 60 messages a second.
# </details>
#
# * Make the handler slower (`0.2` s): how long does a burst of 150 take, and why?
#
# <details><summary>Answer</summary>
#
# About 10 s: 3 workers at 0.2 s handle 15 messages a second, and 150 / 15 = 10. The
# buffer and the queue fill within a second; from then on the burst publishes only as
# fast as the workers take messages — backpressure.
# </details>
