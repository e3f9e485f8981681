"""CUDA-graph wrapper: cache, keying, copy semantics and invalidation.

On the CPU a stand-in capturer replays by re-running the model into the static
output buffer, which is exactly what a CUDA graph does with its recorded
kernels; on a CUDA machine the real capture is tested against the eager model.
"""

import pytest
import torch

from bcrn_fast import BCRN, InputError
from bcrn_fast.graphs import GraphedModule, graphed


class ReplayByRerun:
    """Stand-in for ``_CudaCapturer``: 'records' model(static_in), replays it in place."""

    def __init__(self) -> None:
        self.replays = 0

    def check_device(self, device: torch.device) -> None:
        pass

    def capture(self, model, static_in):
        static_out = model(static_in)

        def run() -> None:
            static_out.copy_(model(static_in))

        return run, static_out

    def replay(self, graph) -> None:
        self.replays += 1
        graph()


@pytest.fixture(scope="module")
def small_model() -> BCRN:
    torch.manual_seed(0)
    return BCRN(scale=2).eval().requires_grad_(False)


def test_replay_matches_eager_and_sees_in_place_input_changes(small_model: BCRN) -> None:
    g = GraphedModule(small_model, capturer=ReplayByRerun())
    x = torch.rand(1, 3, 16, 17)
    y1 = g(x)
    torch.testing.assert_close(y1, small_model(x), rtol=0, atol=0)
    x.mul_(0.5)  # the caller edits its input in place: the next call must see it
    y2 = g(x)
    torch.testing.assert_close(y2, small_model(x), rtol=0, atol=0)
    assert g.captures == 1
    # outputs are copies: the second replay did not overwrite the first result
    assert not torch.equal(y1, y2)


def test_one_graph_per_signature_and_bounded_cache(small_model: BCRN) -> None:
    cap = ReplayByRerun()
    g = GraphedModule(small_model, max_graphs=2, capturer=cap)
    a, b, c = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 17, 16), torch.rand(2, 3, 16, 16)
    g(a), g(a), g(b)
    assert g.captures == 2
    g(c)  # evicts a's graph (least recently used)
    assert g.captures == 3 and len(g._graphs) == 2
    g(a)
    assert g.captures == 4
    cl = a.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(g(cl), small_model(cl), rtol=0, atol=0)
    assert g.captures == 5  # channels-last strides are their own signature


def test_weight_edit_triggers_recapture(small_model: BCRN) -> None:
    model = BCRN(scale=2).eval().requires_grad_(False)
    model.load_state_dict(small_model.state_dict())
    g = GraphedModule(model, capturer=ReplayByRerun())
    x = torch.rand(1, 3, 16, 16)
    g(x)
    with torch.no_grad():
        model.conv1.pw.weight.mul_(2.0)
    y = g(x)
    assert g.captures == 2
    torch.testing.assert_close(y, model(x), rtol=0, atol=0)


def test_clone_false_returns_the_static_buffer(small_model: BCRN) -> None:
    g = GraphedModule(small_model, clone=False, capturer=ReplayByRerun())
    x = torch.rand(1, 3, 16, 16)
    assert g(x).data_ptr() == g(x).data_ptr()


def test_cpu_is_a_clear_error(small_model: BCRN) -> None:
    with pytest.raises(InputError, match="CUDA graphs need CUDA tensors"):
        graphed(small_model)(torch.rand(1, 3, 16, 16))
    with pytest.raises(InputError, match="max_graphs"):
        graphed(small_model, max_graphs=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_graph_replay_matches_eager(backend: str) -> None:
    from bcrn_fast import BCRNFused
    from bcrn_fast.ops import cuda_ext

    if backend == "cuda" and not cuda_ext.available():
        pytest.skip(f"CUDA extension not built: {cuda_ext.import_error()}")
    torch.manual_seed(0)
    model = BCRNFused(scale=4, backend=backend).cuda().half()
    g = graphed(model)
    x = torch.rand(2, 3, 40, 33, device="cuda", dtype=torch.half)
    with torch.inference_mode():
        ref = model(x)
    torch.testing.assert_close(g(x), ref, rtol=0, atol=0)
    x2 = torch.rand_like(x)
    with torch.inference_mode():
        ref2 = model(x2)
    x.copy_(x2)
    torch.testing.assert_close(g(x), ref2, rtol=0, atol=0)
    assert g.captures == 1


def test_capture_after_runs_one_off_shapes_eagerly(small_model: BCRN) -> None:
    """capture_after=2: a signature's first call runs the model itself, its second captures, later ones replay."""
    cap = ReplayByRerun()
    g = GraphedModule(small_model, max_graphs=2, capturer=cap, capture_after=2)
    a, b = torch.rand(1, 3, 16, 17), torch.rand(1, 3, 17, 16)
    torch.testing.assert_close(g(a), small_model(a), rtol=0, atol=0)
    torch.testing.assert_close(g(b), small_model(b), rtol=0, atol=0)
    assert g.captures == 0 and cap.replays == 0  # two one-off shapes: no capture paid
    torch.testing.assert_close(g(a), small_model(a), rtol=0, atol=0)
    assert g.captures == 1 and cap.replays == 1
    a.mul_(0.5)
    torch.testing.assert_close(g(a), small_model(a), rtol=0, atol=0)
    assert g.captures == 1 and cap.replays == 2
    g.reset()  # forgets the counts too
    g(a)
    assert g.captures == 1 and cap.replays == 2
    with pytest.raises(InputError, match="capture_after must be a positive int"):
        graphed(small_model, capture_after=0)
