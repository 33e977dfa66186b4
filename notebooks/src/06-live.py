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
# Stop the runtime — what the **Stop** button does. The monitor draws the final state and
# stops following.

# %%
await monitor.stop()
rt.state

# %% [markdown]
# ## Try it
#
# * Start again (`await rt.start()`), make a new monitor, and press *Publish burst* twice
#   quickly: what happens to the publisher waits?
# * Make the handler slower (`0.2` s): how long does a burst of 150 take, and why?
