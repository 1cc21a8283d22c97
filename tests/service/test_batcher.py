"""The batching loop against a fake model (batch formation, limits, deadlines, failures, shutdown), then through the
real app (shared session runs, 503 when full, 504 when late)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.batcher import Batcher
from service.errors import ServiceError
from tests.service.servicetools import COLOURS, count_runs, solid_png


class FakeModel:
    """Doubles each input; records batch sizes and the threads that ran them; can block until released or raise."""

    def __init__(self, gate: threading.Event | None = None, error: Exception | None = None):
        self.batches: list[int] = []
        self.threads: list[str] = []
        self.gate, self.error = gate, error

    def __call__(self, batch: np.ndarray) -> list[float]:
        self.batches.append(len(batch))
        self.threads.append(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(5)
        if self.error is not None:
            raise self.error
        return [float(x) * 2 for x in batch]


def make(model: FakeModel, **limits: float) -> Batcher:
    options = {"max_batch_size": 4, "max_delay_s": 0.05, "max_queue": 16, "timeout_s": 5.0, **limits}
    return Batcher(model, **options)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_limits_are_checked_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="max_batch_size=0"):
        make(FakeModel(), max_batch_size=0)
    with pytest.raises(ValueError, match="timeout_s=0"):
        make(FakeModel(), timeout_s=0)


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    model = FakeModel()

    async def main() -> list[list[float]]:
        batcher = make(model)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([np.float32(i)]) for i in range(10)))
        await batcher.stop(5)
        return results

    results = run(main())
    assert results == [[2.0 * i] for i in range(10)]
    assert model.batches == [4, 4, 2]


def test_a_request_with_more_images_than_a_batch_spans_batches_in_order() -> None:
    model = FakeModel()

    async def main() -> list[float]:
        batcher = make(model, max_delay_s=0)
        batcher.start()
        out = await batcher.submit([np.float32(i) for i in range(6)])
        await batcher.stop(5)
        return out

    assert run(main()) == [2.0 * i for i in range(6)]
    assert model.batches == [4, 2]


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    gate = threading.Event()
    model = FakeModel(gate)

    async def main() -> tuple[list, ServiceError]:
        batcher = make(model, max_batch_size=1, max_delay_s=0, max_queue=2, retry_after_s=3)
        batcher.start()
        running = asyncio.create_task(batcher.submit([np.float32(0)]))
        while not model.batches:  # the first image is inside the model, blocked
            await asyncio.sleep(0.005)
        queued = [asyncio.create_task(batcher.submit([np.float32(i)])) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceError) as refused:
            await batcher.submit([np.float32(3)])
        gate.set()
        results = await asyncio.gather(running, *queued)
        await batcher.stop(5)
        return results, refused.value

    results, error = run(main())
    assert results == [[0.0], [2.0], [4.0]]
    assert (error.status, error.code, error.headers) == (503, "queue_full", {"Retry-After": "3"})


def test_requests_past_their_deadline_get_504_and_never_run() -> None:
    gate = threading.Event()
    model = FakeModel(gate)

    async def main() -> tuple[list, BaseException]:
        batcher = make(model, max_batch_size=1, max_delay_s=0, timeout_s=0.2)
        batcher.start()
        first = asyncio.create_task(batcher.submit([np.float32(1)]))
        while not model.batches:
            await asyncio.sleep(0.005)
        late = asyncio.create_task(batcher.submit([np.float32(7)]))
        done = await asyncio.gather(late, return_exceptions=True)
        gate.set()  # the first request started before its deadline, so it still completes
        results = [await first]
        await batcher.stop(5)
        return results, done[0]

    results, error = run(main())
    assert results == [[2.0]]
    assert isinstance(error, ServiceError) and (error.status, error.code) == (504, "timeout")
    assert model.batches == [1]  # the late image was never run


def test_an_error_in_a_batch_reaches_every_request_in_it() -> None:
    model = FakeModel(error=RuntimeError("device lost"))

    async def main() -> list:
        batcher = make(model)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([np.float32(i)]) for i in range(3)), return_exceptions=True)
        await batcher.stop(5)
        return results

    results = run(main())
    assert len(results) == 3 and all(isinstance(r, RuntimeError) and "device lost" in str(r) for r in results)


def test_wrong_number_of_outputs_is_an_error_for_the_batch() -> None:
    async def main() -> BaseException:
        batcher = Batcher(lambda batch: [1.0], max_batch_size=4, max_delay_s=0.05, max_queue=8, timeout_s=5)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([np.float32(i)]) for i in range(2)), return_exceptions=True)
        await batcher.stop(5)
        return results[0]

    error = run(main())
    assert isinstance(error, RuntimeError) and "1 outputs for 2 images" in str(error)


def test_stop_finishes_accepted_work_then_refuses_new_work() -> None:
    model = FakeModel()

    async def main() -> tuple[list, ServiceError]:
        batcher = make(model, max_delay_s=1.0)  # a long delay: stop must not wait for it
        batcher.start()
        pending = [asyncio.create_task(batcher.submit([np.float32(i)])) for i in range(3)]
        await asyncio.sleep(0.01)
        await batcher.stop(5)
        results = await asyncio.gather(*pending)
        with pytest.raises(ServiceError) as refused:
            await batcher.submit([np.float32(9)])
        return results, refused.value

    results, error = run(main())
    assert results == [[0.0], [2.0], [4.0]] and error.code == "shutting_down"


def test_a_cancelled_request_is_skipped() -> None:
    gate = threading.Event()
    model = FakeModel(gate)

    async def main() -> list:
        batcher = make(model, max_batch_size=1, max_delay_s=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit([np.float32(1)]))
        while not model.batches:
            await asyncio.sleep(0.005)
        gone = asyncio.create_task(batcher.submit([np.float32(2)]))
        kept = asyncio.create_task(batcher.submit([np.float32(3)]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)  # the cancellation has reached the batcher
        gate.set()
        results = [await first, await kept]
        await batcher.stop(5)
        return results

    assert run(main()) == [[2.0], [6.0]]
    assert model.batches == [1, 1]


def test_a_lone_request_runs_at_once_without_waiting_for_company() -> None:
    gate = threading.Event()
    model = FakeModel(gate)

    async def main() -> tuple[list[int], list[float]]:
        # Room for 64 images per batch and no delay: nothing but a free runner decides when a batch runs.
        batcher = make(model, max_batch_size=64, max_delay_s=0, timeout_s=3600)
        batcher.start()
        lone = asyncio.create_task(batcher.submit([np.float32(3)]))
        while not model.batches:  # it reaches the model alone; a batcher that waited for company never would
            await asyncio.sleep(0)
        seen = list(model.batches)
        gate.set()
        result = await lone
        await batcher.stop(5)
        return seen, result

    seen, result = run(main())
    assert seen == [1] and result == [6.0]


def test_a_burst_queued_behind_a_running_batch_forms_the_next_batch() -> None:
    gate = threading.Event()
    model = FakeModel(gate)

    async def main() -> list[list[float]]:
        batcher = make(model, max_batch_size=4, max_delay_s=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit([np.float32(0)]))
        while not model.batches:  # the first request runs alone, and is held inside the model
            await asyncio.sleep(0)
        burst = [asyncio.create_task(batcher.submit([np.float32(i)])) for i in range(1, 6)]
        while batcher.depth < 5:
            await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(first, *burst)
        await batcher.stop(5)
        return results

    assert run(main()) == [[2.0 * i] for i in range(6)]
    assert model.batches == [1, 4, 1]  # the burst filled the next batch, the rest the one after


def test_the_opt_in_delay_closes_a_batch_as_soon_as_it_is_full() -> None:
    model = FakeModel()

    async def main() -> list[list[float]]:
        batcher = make(model, max_batch_size=3, max_delay_s=3600)  # only a full batch can close it
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([np.float32(i)]) for i in range(3)))
        await batcher.stop(5)
        return results

    assert run(main()) == [[0.0], [2.0], [4.0]]
    assert model.batches == [3]


def test_admission_holds_room_until_the_images_are_taken_and_gives_it_back_when_unused() -> None:
    gate = threading.Event()
    model = FakeModel(gate)

    async def main() -> tuple[list[int], ServiceError, ServiceError, list]:
        batcher = make(model, max_batch_size=1, max_delay_s=0, max_queue=3, retry_after_s=2)
        batcher.start()
        held = batcher.admit()  # a request whose body is in, its images not yet submitted
        with batcher.admit() as dropped:  # one that fails before submitting (a bad image, say)
            assert batcher.reserved == 2
        counts = [batcher.reserved]
        running = asyncio.create_task(batcher.submit([np.float32(1)]))
        while not model.batches:
            await asyncio.sleep(0)
        counts.append(batcher.reserved)  # taken into a batch: its room is free again
        other = asyncio.create_task(batcher.submit([np.float32(3)]))
        while batcher.depth < 1:
            await asyncio.sleep(0)
        with pytest.raises(ServiceError) as grown:
            batcher.admit(3)  # a body of three images: beside the held and the queued one, no room
        with pytest.raises(ServiceError) as full:
            batcher.admit(2)
        queued = asyncio.create_task(batcher.submit([np.float32(2)], ticket=held))
        while batcher.depth < 2:
            await asyncio.sleep(0)
        counts.append(batcher.reserved)  # submitting on its ticket took no new room
        gate.set()
        results = await asyncio.gather(running, queued, other)
        counts.append(batcher.reserved)
        await batcher.stop(5)
        assert not dropped.held
        return counts, grown.value, full.value, results

    counts, grown, full, results = run(main())
    assert counts == [1, 1, 2, 0]
    assert (grown.status, grown.code) == (503, "queue_full") and (full.code, full.headers) == (
        "queue_full",
        {"Retry-After": "2"},
    )
    assert results == [[2.0], [4.0], [6.0]]


def test_the_check_before_a_body_is_read_refuses_as_admission_does_and_reserves_nothing() -> None:
    async def main() -> ServiceError:
        batcher = make(FakeModel(), max_queue=2, retry_after_s=4)
        batcher.start()
        for _ in range(5):
            batcher.check(2)  # however many bodies are being read, none of them holds room
        assert batcher.reserved == 0
        with batcher.admit(2):
            with pytest.raises(ServiceError) as full:
                batcher.check()
        batcher.check(2)  # the room came back with the ticket
        await batcher.stop(5)
        return full.value

    full = run(main())
    assert (full.status, full.code, full.headers) == (503, "queue_full", {"Retry-After": "4"})


# Through the real app.

NAMES = list(COLOURS)


def post(client: TestClient, name: str):
    return client.post("/classify", files=[("file", (f"{name}.png", solid_png(COLOURS[name])))])


def test_concurrent_requests_are_served_in_fewer_runs_with_their_own_results(app_client) -> None:
    client = app_client(max_batch_size=8, max_batch_delay_ms=400)
    session = count_runs(client)
    names = [NAMES[i % len(NAMES)] for i in range(8)]
    with ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(lambda name: post(client, name), names))
    assert [r.status_code for r in responses] == [200] * len(names)
    assert [r.json()["predictions"][0]["top_k"][0]["label"] for r in responses] == names
    assert len(session.batches) < len(names) and sum(session.batches) == len(names)
    assert "castream_batch_size_images_count" in client.get("/metrics").text


def test_a_lone_request_through_the_app_runs_alone_with_the_default_settings(app_client) -> None:
    client = app_client(max_batch_delay_ms=0.0, max_batch_size=64)
    session = count_runs(client)
    assert post(client, "green").json()["predictions"][0]["top_k"][0]["label"] == "green"
    assert session.batches == [1]


def wait_for_runs(session, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(session.batches) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(session.batches) >= count


def test_full_queue_answers_503_at_once_and_the_service_recovers(app_client) -> None:
    client = app_client(
        max_batch_size=1, max_batch_delay_ms=0, max_queue=1, max_images_per_request=1, retry_after_s=2,
        concurrent_batches=1,  # one batch at a time: the second request queues behind the first
    )  # fmt: skip
    session = count_runs(client, delay_s=0.5)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, client, "red")
        wait_for_runs(session, 1)  # the first image is inside the model
        queued = pool.submit(post, client, "green")
        deadline = time.monotonic() + 10
        while client.app.state.lifecycle.serving.batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        refused = post(client, "blue")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["code"] == "queue_full"
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert post(client, "dark").json()["predictions"][0]["top_k"][0]["label"] == "dark"
    assert 'castream_rejections_total{reason="queue_full"} 1.0' in client.get("/metrics").text


def test_a_request_that_waits_past_its_deadline_gets_504_and_is_never_run(app_client) -> None:
    client = app_client(max_batch_size=1, max_batch_delay_ms=0, request_timeout_ms=100, concurrent_batches=1)
    session = count_runs(client, delay_s=0.6)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, client, "red")
        wait_for_runs(session, 1)
        late = post(client, "green")
        assert late.status_code == 504 and late.json()["code"] == "timeout"
        assert running.result().status_code == 200
    assert session.batches == [1]
    assert 'castream_rejections_total{reason="timeout"} 1.0' in client.get("/metrics").text


def test_a_ticket_queues_exactly_the_images_it_was_admitted_for_and_only_once() -> None:
    async def main() -> list[float]:
        batcher = make(FakeModel(), max_queue=4)
        batcher.start()
        with batcher.admit(2) as ticket:
            with pytest.raises(ValueError, match="a ticket for 2 images"):
                await batcher.submit([np.float32(1)], ticket=ticket)  # sized once: never resized to fit
            assert batcher.reserved == 2
            results = await batcher.submit([np.float32(1), np.float32(2)], ticket=ticket)
            with pytest.raises(ValueError, match="no longer held"):
                await batcher.submit([np.float32(1), np.float32(2)], ticket=ticket)
        assert batcher.reserved == 0 and not ticket.held
        ticket.release()  # once given back, again changes nothing
        batcher.release(ticket)
        assert batcher.reserved == 0
        await batcher.stop(5)
        return results

    assert run(main()) == [2.0, 4.0]


def test_queue_full_answers_say_how_long_to_wait_and_what_bounds_the_queue() -> None:
    async def main() -> list[str]:
        batcher = make(FakeModel(), max_queue=3, retry_after_s=5, queue_limit="this process takes 3")
        batcher.start()
        details = []
        with batcher.admit(2):
            with pytest.raises(ServiceError) as partial:
                batcher.admit(2)
            details.append(partial.value.detail)
            with batcher.admit(1), pytest.raises(ServiceError) as full:
                batcher.check()
            details.append(full.value.detail)
        await batcher.stop(5)
        return details

    assert run(main()) == [
        "the queue has room for 1 of this request's 2 images (this process takes 3); retry in 5 s, "
        "or send fewer images at once",
        "the queue is full (3 images waiting; this process takes 3); retry in 5 s",
    ]


def test_lanes_are_checked_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="lanes=0"):
        make(FakeModel(), lanes=0)
    with ThreadPoolExecutor(1) as one, pytest.raises(ValueError, match="1 executors for 2 lanes: give one per lane"):
        make(FakeModel(), lanes=2, executors=[one])


def test_each_lane_has_its_own_thread_and_a_batch_takes_the_lowest_free_lane() -> None:
    gates = [threading.Event(), threading.Event()]
    whole, shared = FakeModel(), FakeModel()

    async def main() -> None:
        batcher = make(whole, max_batch_size=1, max_delay_s=0, lanes=2, shared_run=shared)
        batcher.start()
        for i in range(3):  # one at a time: always the first lane's thread
            assert await batcher.submit([np.float32(i)]) == [2.0 * i]
        whole.gate = gates[0]
        first = asyncio.create_task(batcher.submit([np.float32(3)]))
        while len(whole.batches) < 4:  # held on the first lane
            await asyncio.sleep(0)
        whole.gate, shared.gate = None, gates[1]
        second = asyncio.create_task(batcher.submit([np.float32(4)]))
        while not shared.batches:  # beside it, on the second lane, held too
            await asyncio.sleep(0)
        gates[0].set()
        assert await first == [6.0]
        shared.gate = None
        # The first lane is free again and the second still busy: the next batch takes the first.
        assert await batcher.submit([np.float32(5)]) == [10.0]
        gates[1].set()
        assert await second == [8.0]
        await batcher.stop(5)

    run(main())
    assert whole.threads == ["castream-inference-0_0"] * 4
    assert shared.threads == ["castream-inference-1_0", "castream-inference-0_0"]


def test_with_two_lanes_a_lone_request_runs_on_every_thread_and_company_runs_beside_it_on_the_shared_run() -> None:
    gate = threading.Event()
    whole, shared = FakeModel(gate), FakeModel()

    async def main() -> tuple[list[float], list[float], list[int], int]:
        batcher = make(whole, max_batch_size=4, max_delay_s=0, lanes=2, shared_run=shared)
        batcher.start()
        lone = asyncio.create_task(batcher.submit([np.float32(1)]))
        while not whole.batches:  # alone in the service: the session with every thread, held inside the model
            await asyncio.sleep(0)
        # A second request while the first runs does not wait for it: it runs at once, on the shared session.
        beside = await batcher.submit([np.float32(2)])
        held = list(whole.batches)
        gate.set()
        first = await lone
        await batcher.stop(5)
        return first, beside, held, batcher.shared_runs

    first, beside, held, shared_runs = run(main())
    assert (first, beside) == ([2.0], [4.0])
    assert held == [1] and shared.batches == [1] and shared_runs == 1


def test_no_more_batches_run_at_once_than_there_are_lanes_and_stop_finishes_them_all() -> None:
    gates = [threading.Event(), threading.Event()]
    whole, shared = FakeModel(gates[0]), FakeModel(gates[1])

    async def main() -> tuple[list[list[float]], int, list[int], list[int]]:
        batcher = make(whole, max_batch_size=2, max_delay_s=0, lanes=2, shared_run=shared)
        batcher.start()
        first = asyncio.create_task(batcher.submit([np.float32(0)]))
        while not whole.batches:
            await asyncio.sleep(0)
        second = asyncio.create_task(batcher.submit([np.float32(1)]))
        while not shared.batches:  # both lanes busy now, each held inside its model
            await asyncio.sleep(0)
        rest = [asyncio.create_task(batcher.submit([np.float32(i)])) for i in (2, 3, 4)]
        for _ in range(50):  # however long the loop turns, the third batch waits for a free lane
            await asyncio.sleep(0.001)
        waiting = batcher.depth
        stopping = asyncio.create_task(batcher.stop(5))  # accepted work still runs to the end
        await asyncio.sleep(0.01)
        gates[1].set()
        gates[0].set()
        results = await asyncio.gather(first, second, *rest)
        await stopping
        return results, waiting, whole.batches, shared.batches

    results, waiting, on_whole, on_shared = run(main())
    assert results == [[0.0], [2.0], [4.0], [6.0], [8.0]]
    assert waiting == 3
    # The first ran alone and the second beside it; [2, 3] was taken with 4 still queued, so beside another too.
    # The last, [4], may find both lanes free once the gates open (then it runs alone, on every thread) or not.
    assert on_whole[0] == 1 and on_shared[0] == 1 and 2 in on_shared
    assert sorted(on_whole + on_shared) == [1, 1, 1, 2]


class HeldSession:
    """Wraps an InferenceSession: each run waits (up to 10 s) until ``gate`` is set."""

    def __init__(self, session: object, gate: threading.Event):
        self.session, self.gate, self.entered = session, gate, threading.Event()

    def run(self, outputs: list[str], feeds: dict) -> list[np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        return self.session.run(outputs, feeds)

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)


def test_through_the_app_a_request_that_arrives_while_a_batch_runs_is_answered_beside_it(app_client) -> None:
    client = app_client(max_batch_size=1, max_batch_delay_ms=0, concurrent_batches=2, intra_op_threads=2)
    model, gate = client.app.state.lifecycle.serving.model, threading.Event()
    model.session = held = HeldSession(model.session, gate)  # a lone batch's session: every thread, held here
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, client, "red")
        assert held.entered.wait(10), "the first request never reached the model"
        beside = post(client, "green")  # on the shared session, while the first is still inside the model
        first_still_running = not running.done()
        gate.set()
        first = running.result()
    assert first_still_running
    assert beside.status_code == 200 and beside.json()["predictions"][0]["top_k"][0]["label"] == "green"
    assert first.status_code == 200 and first.json()["predictions"][0]["top_k"][0]["label"] == "red"
    assert "castream_shared_batches_total 1.0" in client.get("/metrics").text


def test_batches_that_end_sooner_than_the_wait_for_company_run_one_at_a_time() -> None:
    whole, shared = FakeModel(), FakeModel()

    async def main() -> list[list[float]]:
        batcher = make(whole, max_batch_size=1, max_delay_s=0, lanes=2, shared_run=shared, beside_after_s=60)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([np.float32(i)]) for i in range(6)))
        await batcher.stop(5)
        return results

    assert run(main()) == [[2.0 * i] for i in range(6)]
    assert whole.batches == [1] * 6 and shared.batches == []  # each ended before a second could start beside it
