"""Speculative decoding: an EAGLE-3 or Medusa draft for the served base model.

The draft is trained (or attached) on a copy of the base converted by
`modelopt.torch.speculative`; the base model itself is returned untouched, so speculative decoding
never changes what the served model outputs. The draft is published as the `draft` artifact:

- EAGLE-3: `export_speculative_decoding` writes the draft alone (`LlamaForCausalLMEagle3`,
  `model.safetensors` + `config.json`). The draft is sized from the base (hidden size, heads, MLP
  width, RoPE), not from modelopt's 8B-sized default, and keeps the base's RoPE on export.
- Medusa: modelopt's speculative exporter handles EAGLE only, so `export_hf_checkpoint` writes the
  base with its `medusa_heads.*` tensors and a `medusa` entry in `config.json`.

Training runs `training.steps` optimizer steps on the training data with the base frozen and
checkpoints every `checkpoint_every` steps under the technique's workdir; a restarted pod resumes
(see `kiln_jobs.techniques._training`). Attaching (`draft`) validates an existing draft against the
base, loads it to measure it, and copies its directory as the artifact.

The acceptance length is measured by `measure_acceptance_length` (greedy speculative decoding
emulated step by step; see there) on the Plan's evaluation data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modelopt.torch.speculative as mtsp
import torch
from modelopt.torch.export import export_hf_checkpoint, export_speculative_decoding
from modelopt.torch.opt import ModeloptStateManager
from modelopt.torch.speculative.config import eagle3_default_config
from modelopt.torch.speculative.plugins.hf_eagle import default_eagle_aux_layer_ids
from safetensors import safe_open
from transformers import PreTrainedModel

from kiln_jobs.contract import DRAFT_DIR, EAGLE_DRAFT_LENGTH
from kiln_jobs.errors import SourceNotFound, UserError
from kiln_jobs.plan import DataRef, ModelRef, SpeculativePlan
from kiln_jobs.techniques._training import TrainingResult, train_resumably
from kiln_jobs.techniques.context import TechniqueContext, TechniqueOutcome

__all__ = ["ACCEPTANCE_NEW_TOKENS", "measure_acceptance_length", "run"]

# The acceptance measurement: up to this many prompts of this many tokens, each continued
# greedily by the base for this many tokens.
ACCEPTANCE_PROMPTS = 8
ACCEPTANCE_PROMPT_TOKENS = 64
ACCEPTANCE_NEW_TOKENS = 32
# Used only when the runner passes no evaluation data and no training data is in the Plan.
_FALLBACK_EVAL = DataRef(samples=ACCEPTANCE_PROMPTS, seq_length=ACCEPTANCE_PROMPT_TOKENS)
_SEED = 0
_IGNORE_INDEX = -100

# Proposes k draft tokens for a context [1, T] (the base's own next token is not included).
Proposer = Callable[[torch.Tensor], torch.Tensor]


def run(ctx: TechniqueContext, spec: SpeculativePlan) -> TechniqueOutcome:
    """Train or attach a draft for `ctx.model`, measure its acceptance length, export it.

    Args:
        ctx: The model to serve (returned unchanged) and the job's services.
        spec: The algorithm, and either `training` or an existing `draft`.

    Returns:
        The unchanged base model, the `draft` artifact and the measured numbers.
    """
    _validate(spec)
    base = _check_base(ctx.model)
    base.eval()
    metrics: dict[str, float | int | str] = {"speculative_algorithm": spec.algorithm}
    if spec.draft is not None:
        source = _resolve_draft(ctx, spec.draft)
        drafter = _attach(base, spec, source)
        metrics["draft_source"] = "attached"
    else:
        drafter = _new_drafter(base, spec)
        metrics.update(_train_metrics(_train(ctx, spec, drafter)))
        metrics["draft_source"] = "trained"
    drafter.eval()
    metrics.update(_acceptance_metrics(ctx, spec, base, drafter))
    draft_dir = ctx.workdir / DRAFT_DIR
    if spec.draft is not None:
        _copy_dir(source, draft_dir)
    else:
        _export(drafter, spec, draft_dir)
    ctx.progress(100.0, f"draft exported; acceptance length {metrics['acceptance_length']}")
    return TechniqueOutcome(model=base, metrics=metrics, artifacts={DRAFT_DIR: draft_dir})


def measure_acceptance_length(
    propose: Proposer,
    base: Any,
    prompts: torch.Tensor,
    new_tokens: int,
    draft_tokens: int,
    report: Callable[[int, int], None] | None = None,
) -> float:
    """Mean tokens produced per base-model verification step in greedy speculative decoding.

    For each prompt, the base model first generates `new_tokens + k` tokens greedily (with its KV
    cache): greedy speculative decoding must produce exactly this text, whatever the draft. Then
    decoding is emulated from the prompt: at each step the draft proposes the k tokens that
    follow the base's next token, the base's verification pass yields that next token (always
    accepted) and accepts the longest prefix of the proposal that matches its greedy text. The
    context advances by the accepted tokens, until `new_tokens` tokens have been produced. The
    result is (tokens produced) / (verification steps) over all prompts: 1.0 when every draft
    token is rejected, k + 1 when every one is accepted.

    Args:
        propose: Returns k draft tokens (LongTensor [k]) for a context [1, T].
        base: The base model (a causal LM whose output has `.logits`).
        prompts: LongTensor [n, prompt_len].
        new_tokens: Tokens to produce per prompt.
        draft_tokens: k, the number of tokens `propose` returns.
        report: Called with (prompts done, prompts) after each prompt.

    Returns:
        The acceptance length, in [1, k + 1].
    """
    k = draft_tokens
    produced = steps = 0
    for done, prompt in enumerate(prompts, start=1):
        context = prompt[None, :]
        truth = _greedy(base, context, new_tokens + k)
        position = 0
        while position < new_tokens:
            drafted = propose(torch.cat([context, truth[None, :position]], dim=1))
            accepted = 1 + _matching_prefix(drafted, truth[position + 1 : position + 1 + k])
            position += accepted
            produced += accepted
            steps += 1
        if report is not None:
            report(done, prompts.shape[0])
    return produced / steps


# --- validation ---------------------------------------------------------------------------------


def _validate(spec: SpeculativePlan) -> None:
    """Exactly one of `training` and `draft`."""
    if spec.draft is None and spec.training is None:
        raise UserError("speculative: set `training` to train a draft or `draft` to attach one")
    if spec.draft is not None and spec.training is not None:
        raise UserError("speculative: set either `training` or `draft`, not both")


def _check_base(model: Any) -> PreTrainedModel:
    """A Hugging Face causal LM (decoder-layer list, lm_head) that no modelopt mode converted."""
    if isinstance(model, torch.nn.Module) and ModeloptStateManager.is_converted(model):
        # The exporters would then describe the unquantized draft with the base's quantization.
        raise UserError(
            "speculative: the model was already converted by Model Optimizer (e.g. quantized); "
            "put speculative before ptq/qat/qad in the technique stack: the draft is trained on "
            "the unquantized base, which may be quantized afterwards"
        )
    decoder = getattr(model, "model", None)
    if not isinstance(model, PreTrainedModel) or not hasattr(decoder, "layers"):
        raise UserError(
            f"speculative: needs a Hugging Face causal LM with `model.layers`; got "
            f"{type(model).__name__}"
        )
    if not hasattr(model, "lm_head"):
        raise UserError(f"speculative: {type(model).__name__} has no `lm_head`")
    return model


# --- building the draft ---------------------------------------------------------------------------


def _new_drafter(base: PreTrainedModel, spec: SpeculativePlan) -> Any:
    """A converted copy of the base with a freshly initialised draft."""
    if spec.algorithm == "eagle3":
        return _convert_eagle(base, _eagle_architecture(base.config, spec.num_layers))
    return _convert_medusa(base, heads=spec.medusa_heads, layers=spec.num_layers)


def _eagle_architecture(config: Any, num_layers: int) -> dict[str, Any]:
    """EAGLE-3's draft config with the base's dimensions instead of modelopt's 8B defaults."""
    heads = config.num_attention_heads
    rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope["rope_theta"] = rope_theta
    arch = copy.deepcopy(eagle3_default_config)
    arch.update(
        num_hidden_layers=num_layers,
        intermediate_size=config.intermediate_size,
        num_attention_heads=heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        hidden_act=getattr(config, "hidden_act", "silu"),
        rms_norm_eps=getattr(config, "rms_norm_eps", 1e-5),
        rope_scaling=rope,
        rope_theta=rope_theta,
        # modelopt's default ids name layer 1 even in a 1-layer base; keep only layers that exist.
        eagle_aux_hidden_state_layer_ids=sorted(
            i
            for i in default_eagle_aux_layer_ids(config.num_hidden_layers)
            if i < config.num_hidden_layers
        ),
        torch_dtype=str(getattr(config, "dtype", None) or torch.float32).removeprefix("torch."),
    )
    return arch


def _convert_eagle(base: PreTrainedModel, arch: dict[str, Any]) -> Any:
    """Copy the base and add an EAGLE-3 module (seeded, without touching the global RNG)."""
    drafter = copy.deepcopy(base)
    config = {
        "eagle_architecture_config": arch,
        # torch.compile made the first CPU step take minutes; eager is fast enough for a draft.
        "eagle_use_torch_compile": False,
        # The draft keeps the base's RoPE; modelopt would otherwise inject YaRN scaling on export.
        "eagle_export_rope_scaling": {},
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        mtsp.convert(drafter, [("eagle", config)])
    return drafter


def _convert_medusa(base: PreTrainedModel, heads: int, layers: int) -> Any:
    """Copy the base and add Medusa heads; only the heads train."""
    drafter = copy.deepcopy(base)
    config = {"medusa_num_heads": heads, "medusa_num_layers": layers}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        mtsp.convert(drafter, [("medusa", config)])
    # modelopt leaves the base trainable for Medusa; the served base must not move.
    for name, param in drafter.named_parameters():
        param.requires_grad_(name.startswith("medusa_heads."))
    return drafter


def _draft_tokens(drafter: Any) -> int:
    """Tokens the draft proposes per step: one per Medusa head, EAGLE_DRAFT_LENGTH for EAGLE."""
    if hasattr(drafter, "medusa_heads"):
        return len(drafter.medusa_heads)
    return EAGLE_DRAFT_LENGTH


def _draft_module(drafter: Any) -> torch.nn.Module:
    return drafter.medusa_heads if hasattr(drafter, "medusa_heads") else drafter.eagle_module


def _draft_params(drafter: Any) -> int:
    return sum(p.numel() for p in _draft_module(drafter).parameters())


# --- training -----------------------------------------------------------------------------------


def _train(ctx: TechniqueContext, spec: SpeculativePlan, drafter: Any) -> TrainingResult:
    """Train the draft on the training data, resuming from the workdir's checkpoint."""
    assert spec.training is not None  # _validate guarantees it
    device = next(drafter.parameters()).device
    blocks = ctx.token_blocks(spec.training.data, "train").to(device)
    loss_at = _eagle_loss(drafter) if spec.algorithm == "eagle3" else _medusa_loss(drafter)
    params = {n: p for n, p in drafter.named_parameters() if p.requires_grad}
    drafter.train()
    return train_resumably(
        params=params,
        loss_at=loss_at,
        blocks=blocks,
        training=spec.training,
        checkpoint_dir=ctx.workdir / "training",
        fingerprint=_fingerprint(spec, drafter.config),
        progress=ctx.progress,
        label=f"{spec.algorithm} draft",
        percent_span=(0.0, 80.0),
    )


def _eagle_loss(drafter: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    # EAGLE distils the base's own next-token distributions; no labels needed.
    return lambda batch: drafter(input_ids=batch).loss


def _medusa_loss(drafter: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    # modelopt's Medusa loss expects labels already shifted: labels[t] is the token after t, and
    # head i then learns the token i + 2 positions ahead.
    def loss_at(batch: torch.Tensor) -> torch.Tensor:
        ignore = torch.full_like(batch[:, :1], _IGNORE_INDEX)
        return drafter(input_ids=batch, labels=torch.cat([batch[:, 1:], ignore], dim=1)).loss

    return loss_at


def _fingerprint(spec: SpeculativePlan, config: Any) -> str:
    """The recipe and base shape a checkpoint belongs to."""
    shape = (config.hidden_size, config.num_hidden_layers, config.vocab_size)
    text = spec.model_dump_json() + repr(shape)
    return hashlib.sha256(text.encode()).hexdigest()


def _train_metrics(result: TrainingResult) -> dict[str, float | int | str]:
    metrics: dict[str, float | int | str] = {
        "train_steps": result.steps,
        "train_resumed_from_step": result.resumed_from,
    }
    if result.first_loss is not None and result.last_loss is not None:
        metrics["train_loss_first"] = round(result.first_loss, 4)
        metrics["train_loss_last"] = round(result.last_loss, 4)
    if result.seconds_per_step is not None:
        metrics["train_seconds_per_step"] = round(result.seconds_per_step, 3)
    return metrics


# --- attaching an existing draft ----------------------------------------------------------------


def _resolve_draft(ctx: TechniqueContext, ref: ModelRef) -> Path:
    """The local directory of the draft to attach."""
    if ctx.resolve_model is not None:
        path = Path(ctx.resolve_model(ref))
    elif ref.source.startswith("file://"):
        path = Path(ref.source.removeprefix("file://"))
    else:
        raise UserError(f"speculative: cannot fetch draft {ref.source}: only file:// is resolvable")
    if not (path / "config.json").is_file():
        raise SourceNotFound(f"speculative: draft {ref.source} has no config.json at {path}")
    return path


def _attach(base: PreTrainedModel, spec: SpeculativePlan, source: Path) -> Any:
    """A converted copy of the base carrying the existing draft's weights."""
    config = json.loads((source / "config.json").read_text())
    if spec.algorithm == "eagle3":
        return _attach_eagle(base, config, source)
    return _attach_medusa(base, spec, config, source)


def _attach_eagle(base: PreTrainedModel, config: dict[str, Any], source: Path) -> Any:
    """Rebuild the EAGLE-3 module from the draft's config.json and load its weights."""
    eagle = config.get("eagle_config")
    if not isinstance(eagle, dict) or "LlamaForCausalLMEagle3" not in config.get(
        "architectures", []
    ):
        raise UserError(f"speculative: {source} is not an EAGLE-3 draft (LlamaForCausalLMEagle3)")
    _check_draft_matches(base, config, source)
    weights = _safetensors(source, prefix="")
    arch = _eagle_architecture(base.config, int(config["num_hidden_layers"]))
    for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        arch[key] = config[key]
    for key in ("hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling", "draft_vocab_size"):
        if config.get(key) is not None:
            arch[key] = config[key]
    for key in (
        "eagle_aux_hidden_state_layer_ids",
        "use_aux_hidden_state",
        "use_input_layernorm_in_first_layer",
        "use_last_layernorm",
        "use_mtp_layernorm",
    ):
        if eagle.get(key) is not None:
            arch[key] = eagle[key]
    # The exporter always writes lm_head (the base's when the draft has none of its own).
    own_head = "lm_head.weight" in weights and not torch.equal(
        weights["lm_head.weight"].to(base.lm_head.weight), base.lm_head.weight
    )
    arch["has_lm_head"] = own_head
    drafter = _convert_eagle(base, arch)
    if not hasattr(drafter.eagle_module, "lm_head"):
        weights.pop("lm_head.weight", None)
    _load(drafter.eagle_module, weights, source)
    return drafter


def _attach_medusa(
    base: PreTrainedModel, spec: SpeculativePlan, config: dict[str, Any], source: Path
) -> Any:
    """Rebuild Medusa heads from the checkpoint's `medusa` config and load `medusa_heads.*`."""
    medusa = config.get("medusa")
    if not isinstance(medusa, dict):
        raise UserError(f"speculative: {source} is not a Medusa checkpoint (no `medusa` config)")
    _check_draft_matches(base, config, source)
    heads, layers = int(medusa["num_medusa_heads"]), int(medusa["num_medusa_layers"])
    if "medusa_heads" in spec.model_fields_set and spec.medusa_heads != heads:
        raise UserError(f"speculative: medusa_heads={spec.medusa_heads} but {source} has {heads}")
    drafter = _convert_medusa(base, heads=heads, layers=layers)
    _load(drafter.medusa_heads, _safetensors(source, prefix="medusa_heads."), source)
    return drafter


def _check_draft_matches(base: PreTrainedModel, config: dict[str, Any], source: Path) -> None:
    """A draft reads the base's hidden states and tokens: both sizes must agree."""
    want = (base.config.hidden_size, base.config.vocab_size)
    got = (config.get("hidden_size"), config.get("vocab_size"))
    if got != want:
        raise UserError(
            f"speculative: draft {source} has hidden_size/vocab_size {got[0]}/{got[1]}, "
            f"the base has {want[0]}/{want[1]}"
        )


def _safetensors(source: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors named `prefix*` from every safetensors file in `source`, prefix removed."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if key.startswith(prefix):
                    tensors[key.removeprefix(prefix)] = handle.get_tensor(key)
    if not tensors:
        raise UserError(f"speculative: no draft weights ({prefix or 'any'}*) in {source}")
    return tensors


def _load(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"speculative: draft {source} does not fit this base: {first}") from None


def _copy_dir(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


# --- measuring ------------------------------------------------------------------------------------


def _acceptance_metrics(
    ctx: TechniqueContext, spec: SpeculativePlan, base: PreTrainedModel, drafter: Any
) -> dict[str, float | int | str]:
    """The acceptance length on the evaluation prompts, and what it was measured with."""
    k = _draft_tokens(drafter)
    prompts = _acceptance_prompts(ctx, spec)

    def report(done: int, total: int) -> None:
        ctx.progress(80.0 + 15.0 * done / total, f"acceptance length: prompt {done}/{total}")

    length = measure_acceptance_length(
        _proposer(drafter, k), base, prompts, ACCEPTANCE_NEW_TOKENS, k, report=report
    )
    return {
        "acceptance_length": round(length, 4),
        "draft_tokens_per_step": k,
        "acceptance_prompts": int(prompts.shape[0]),
        "acceptance_new_tokens": ACCEPTANCE_NEW_TOKENS,
        "draft_params": _draft_params(drafter),
    }


def _acceptance_prompts(ctx: TechniqueContext, spec: SpeculativePlan) -> torch.Tensor:
    """Prompts from the evaluation data (the Plan's, else the training data in the eval role)."""
    ref = ctx.evaluation_data or (spec.training.data if spec.training else _FALLBACK_EVAL)
    blocks = ctx.token_blocks(ref, "eval")
    device = next(ctx.model.parameters()).device
    return blocks[:ACCEPTANCE_PROMPTS, :ACCEPTANCE_PROMPT_TOKENS].to(device)


def _proposer(drafter: Any, k: int) -> Proposer:
    """How the draft proposes k tokens for a context."""
    if hasattr(drafter, "medusa_heads"):
        return _medusa_proposer(drafter)

    @torch.no_grad()
    def propose(context: torch.Tensor) -> torch.Tensor:
        _, drafted = drafter.pseudo_speculative_generate(context, steps=k)
        return drafted[0]

    return propose


def _medusa_proposer(drafter: Any) -> Proposer:
    @torch.no_grad()
    def propose(context: torch.Tensor) -> torch.Tensor:
        # Head i predicts the token i + 1 places after the base's own next token.
        output = drafter(input_ids=context, use_cache=False, logits_to_keep=1)
        return torch.stack([logits[0, -1].argmax() for logits in output.medusa_logits])

    return propose


@torch.no_grad()
def _greedy(model: Any, context: torch.Tensor, count: int) -> torch.Tensor:
    """The base's greedy continuation of `context` [1, T]: `count` tokens, EOS not special."""
    output = model(input_ids=context, use_cache=True, logits_to_keep=1)
    tokens: list[torch.Tensor] = []
    while True:
        token = output.logits[:, -1:].argmax(dim=-1)
        tokens.append(token)
        if len(tokens) == count:
            return torch.cat(tokens, dim=1)[0]
        output = model(input_ids=token, past_key_values=output.past_key_values, use_cache=True)


def _matching_prefix(drafted: torch.Tensor, truth: torch.Tensor) -> int:
    """How many leading draft tokens equal the base's continuation."""
    matched = 0
    for proposed, expected in zip(drafted.tolist(), truth.tolist(), strict=False):
        if proposed != expected:
            break
        matched += 1
    return matched


# --- export -------------------------------------------------------------------------------------


def _export(drafter: Any, spec: SpeculativePlan, target: Path) -> None:
    """Write the trained draft in the format its serving runtime reads."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if spec.algorithm == "eagle3":
        export_speculative_decoding(drafter, export_dir=target)
    else:
        export_hf_checkpoint(drafter, export_dir=target)
