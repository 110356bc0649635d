"""The overlapped offloader is exact, copies each saved tensor once, leaves parameters alone, reuses
its host buffers and prefetches in backward order.

There is no GPU here: ``device_filter=everything`` makes CPU tensors offloadable, so the same pack,
dedup, pool and prefetch code runs with synchronous CPU-to-CPU copies instead of stream copies.
"""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from lora_studio.core.train.memory_saving import offload_context
from lora_studio.core.train.offload import HostBuffers, Offloader

LAYERS = 4
WIDTH = 32
TOKENS = 24


def everything(tensor: torch.Tensor) -> bool:
    return True


def offloader(**kwargs) -> Offloader:
    """An offloader that moves every saved CPU tensor, with its own pool (tests stay independent)."""
    return Offloader(
        min_bytes=0, device_filter=everything, buffers=kwargs.pop("buffers", HostBuffers()), **kwargs
    )


class Decoder(torch.nn.Module):
    """Checkpointed blocks fed the previous hidden state and one table shared by all, as rotary tables are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, WIDTH)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.Linear(WIDTH, 2 * WIDTH), torch.nn.GELU(), torch.nn.Linear(2 * WIDTH, WIDTH)
            )
            for _ in range(LAYERS)
        )
        self.head = torch.nn.Linear(WIDTH, 50)

    @staticmethod
    def layer(block: torch.nn.Module, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return hidden + block(hidden * table)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        table = torch.linspace(0.5, 1.5, ids.shape[-1] * WIDTH).view(ids.shape[-1], WIDTH)
        for block in self.blocks:
            hidden = checkpoint(self.layer, block, hidden, table, use_reentrant=False)
        logits = self.head(hidden)
        return torch.nn.functional.cross_entropy(logits.view(-1, 50), ids.view(-1))


def inputs(tokens: int = TOKENS) -> torch.Tensor:
    return torch.randint(0, 50, (2, tokens), generator=torch.Generator().manual_seed(1))


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def is_parameter(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, torch.nn.Parameter) or isinstance(tensor._base, torch.nn.Parameter)


def saved_by_autograd(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor the forward hands to a pack hook, held so that no id is reused."""
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids)
    return saved


def test_loss_and_gradients_equal_those_without_offloading():
    model, ids = Decoder(), inputs()
    plain = model(ids)
    plain.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)

    off = offloader()
    with off:
        loss = model(ids)
    loss.backward()
    assert off.stats.offloaded > LAYERS  # the layer inputs really went through the host buffers
    assert torch.equal(loss, plain)
    for name, grad in grads(model).items():
        assert torch.equal(grad, expected[name]), name


def test_each_saved_tensor_is_copied_once_and_parameters_not_at_all():
    model, ids = Decoder(), inputs()
    saved = saved_by_autograd(model, ids)
    activations = [t for t in saved if not is_parameter(t)]
    distinct = {id(t): t for t in activations}
    assert len(distinct) < len(activations)  # the shared table is saved by every block

    buffers = HostBuffers()
    off = offloader(buffers=buffers)
    with off:
        loss = model(ids)
    stats = off.stats
    assert stats.packed == len(saved)
    assert stats.offloaded == len(distinct)
    assert stats.deduplicated == len(activations) - len(distinct)
    assert stats.offloaded_bytes == sum(t.numel() * t.element_size() for t in distinct.values())
    assert stats.kept_parameters == len(saved) - len(activations) > 0
    assert buffers.allocations == len(distinct)
    loss.backward()


def test_a_parameter_is_saved_as_itself():
    weight = torch.nn.Parameter(torch.randn(64, 64))
    off = offloader()
    with off:
        packed = [off.pack(weight), off.pack(weight.t())]
    assert all(isinstance(p, torch.Tensor) and p.data_ptr() == weight.data_ptr() for p in packed)
    assert off.stats.kept_parameters == 2 and off.stats.offloaded == 0


def test_host_buffers_are_reused_from_one_step_to_the_next():
    model, ids = Decoder(), inputs()
    buffers = HostBuffers()
    for step in range(2):
        off = offloader(buffers=buffers)
        with off:
            loss = model(ids)
        loss.backward()
        if step == 0:
            first = buffers.allocations
            assert first == off.stats.offloaded
        # backward freed the graph: every buffer is back in the pool
        assert buffers.free_bytes() == buffers.held_bytes > 0
    assert buffers.allocations == first
    assert buffers.reuses == first


def test_a_graph_dropped_without_backward_returns_its_buffers():
    model, ids = Decoder(), inputs()
    buffers = HostBuffers()
    with offloader(buffers=buffers):
        loss = model(ids)
    assert buffers.free_bytes() == 0
    del loss
    assert buffers.free_bytes() == buffers.held_bytes > 0


def test_buffers_of_old_shapes_are_dropped_once_unused():
    model = Decoder()

    def step(buffers: HostBuffers, tokens: int) -> int:
        with offloader(buffers=buffers):
            loss = model(inputs(tokens))
        loss.backward()
        return buffers.held_bytes

    needed_for_long = step(HostBuffers(), 200)
    buffers = HostBuffers(keep_contexts=1)
    step(buffers, 8)
    assert step(buffers, 200) > needed_for_long  # the short step's buffers are still kept
    assert step(buffers, 200) == needed_for_long  # unused for a whole step: dropped


def test_backward_prefetches_the_tensor_saved_before():
    """Pack order as under checkpointing with a table every layer receives: a, table, b, table, c."""
    a, table, b, c = (torch.full((16,), float(i)) for i in range(4))
    off = offloader()
    with off:
        ha, ht, hb, ht_again, hc = (off.pack(t) for t in (a, table, b, table, c))
    assert ht is ht_again and off.stats.offloaded == 4

    def fetches() -> tuple[int, int]:
        return off.stats.fetched_on_demand, off.stats.prefetched

    assert torch.equal(off.unpack(hc), c) and fetches() == (1, 1)  # on demand; queues b
    assert torch.equal(off.unpack(ht), table) and fetches() == (2, 1)  # shared: its neighbour a is not next
    assert torch.equal(off.unpack(hb), b) and fetches() == (2, 2)  # was queued; queues a past the table
    assert torch.equal(off.unpack(ha), a) and fetches() == (2, 2)  # was queued
    assert torch.equal(off.unpack(ht), table) and fetches() == (2, 2)  # kept between its unpacks


def test_a_tensor_saved_by_neighbouring_ops_is_prefetched_and_fetched_once():
    """Pack order as around a norm that saves its input twice: a, b, x, x, c."""
    a, b, x, c = (torch.full((16,), float(i)) for i in range(4))
    off = offloader()
    with off:
        ha, hb, hx, _, hc = (off.pack(t) for t in (a, b, x, x, c))

    def fetches() -> tuple[int, int]:
        return off.stats.fetched_on_demand, off.stats.prefetched

    assert torch.equal(off.unpack(hc), c) and fetches() == (1, 2)  # queues x, and b (x does not count)
    assert torch.equal(off.unpack(hx), x) and torch.equal(off.unpack(hx), x) and fetches() == (1, 2)
    assert torch.equal(off.unpack(hb), b) and fetches() == (1, 3)
    assert torch.equal(off.unpack(ha), a) and fetches() == (1, 3)


def test_checkpointed_layers_get_their_inputs_from_prefetches():
    model, ids = Decoder(), inputs()
    off = offloader()
    with off:
        loss = model(ids)
    loss.backward()
    assert off.stats.prefetched >= LAYERS
    # every offloaded tensor came back exactly once, the shared table included
    assert off.stats.prefetched + off.stats.fetched_on_demand == off.stats.offloaded


def test_dense_views_keep_their_strides_and_other_views_stay():
    base = torch.randn(64, 32)
    transposed, sliced, expanded = base.t(), base[:, :16], torch.randn(1, 32).expand(64, 32)
    off = offloader()
    with off:
        handle = off.pack(transposed)
        kept = [off.pack(sliced), off.pack(expanded)]
    back = off.unpack(handle)
    assert torch.equal(back, transposed)
    assert back.stride() == transposed.stride()
    assert back.data_ptr() != transposed.data_ptr()
    assert [k.data_ptr() for k in kept] == [sliced.data_ptr(), expanded.data_ptr()]
    assert off.stats.kept_other == 2


def test_small_tensors_and_tensors_off_the_filtered_device_stay():
    small, large = torch.randn(4), torch.randn(1024)
    off = Offloader(min_bytes=1024, device_filter=everything, buffers=HostBuffers())
    with off:
        off.pack(small)
        off.pack(large)
    assert (off.stats.kept_small, off.stats.offloaded) == (1, 1)
    default = Offloader(min_bytes=0, buffers=HostBuffers())  # only accelerator tensors move
    with default:
        assert default.pack(large).data_ptr() == large.data_ptr()
    assert default.stats.kept_other == 1


def test_a_saved_tensor_changed_in_place_raises_as_autograd_does():
    a = torch.randn(64, requires_grad=True)
    b = torch.randn(64)
    with offloader():
        out = a * b
    b.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_a_tensor_changed_in_place_between_two_saves_is_copied_twice():
    t = torch.zeros(64)
    off = offloader()
    with off:
        first = off.pack(t)
        t.add_(1)
        second = off.pack(t)
    assert first is not second and off.stats.offloaded == 2
    assert torch.equal(off.unpack(second), torch.ones(64))


def test_an_offloader_cannot_be_entered_twice_at_once():
    off = offloader()
    with off, pytest.raises(RuntimeError, match="already in use"), off:
        pass


def test_offload_context_false_installs_no_hooks():
    x = torch.randn(64, requires_grad=True)
    outer = offloader()
    with outer, offload_context(False):
        y = x * x
    assert outer.stats.packed == 2  # the outer hooks still see the saves: nothing was pushed
    y.sum().backward()
    assert torch.equal(x.grad, 2 * x.detach())


def test_offload_context_true_trains_exactly_on_a_cpu_machine():
    def train(offload: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
        model, ids = Decoder(), inputs()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses, contexts = [], []
        for _ in range(3):
            context = offload_context(offload)
            contexts.append(context)
            with context:
                loss = model(ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        if offload:
            assert all(isinstance(c, Offloader) for c in contexts)
            assert contexts[-1].stats.offloaded == 0  # CPU tensors: nothing to gain, nothing moved
        return losses, {n: p.detach().clone() for n, p in model.named_parameters()}

    plain_losses, plain_params = train(False)
    losses, params = train(True)
    assert losses == plain_losses
    assert all(torch.equal(params[n], plain_params[n]) for n in params)


def test_a_checkpointed_llama_with_lora_gets_the_same_gradients(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    ids = torch.randint(0, 1000, (2, 33), generator=torch.Generator().manual_seed(2))

    plain = model(input_ids=ids, labels=ids).loss
    plain.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    off = offloader()
    with off:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert off.stats.deduplicated > 0  # the final norm saves its input twice: copied once
    assert off.stats.kept_parameters > 0
    assert torch.equal(loss, plain)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.grad, expected[name]), name
