"""E2LLMTrainer: TRL's SFTTrainer with E2LLM's two-task loss.

The loss over a global batch is

    loss = sum_i w(task_i) * NLL_i / N

where NLL_i is the summed negative log-likelihood of sample i's target tokens, N the number of
target tokens in the global batch (all processes, all accumulation steps: the Trainer's
`num_items_in_batch`) and w = `understanding_weight` for understanding samples, 1 for reasoning.
Normalising by the global token count keeps the gradient the same for any split of the batch over
processes and accumulation steps. The two tasks' unweighted per-token losses are logged as
`loss_understanding` and `loss_reasoning`.
"""

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from .samples import TASKS, UNDERSTANDING

_UNDERSTANDING_ID = TASKS.index(UNDERSTANDING)


class E2LLMTrainer(SFTTrainer):
    """SFTTrainer for E2LLM samples (see `training.samples`), with a loss weight per task.

    Args:
        understanding_weight: loss weight of understanding tokens relative to reasoning tokens.
        adapter_learning_rate: learning rate of the MLP adapter (trained from scratch); None: `args.learning_rate`.
        Everything else goes to `trl.SFTTrainer`; pass `dataset_kwargs={"skip_prepare_dataset": True}`
        and `remove_unused_columns=False` in `args`, and an `E2LLMCollator` as `data_collator`. The SFTConfig
        options this loss does not implement are refused (see `unsupported_options`), never ignored.
    """

    def __init__(self, model, args: SFTConfig, *more, understanding_weight: float = 1.0,
                 adapter_learning_rate: float | None = None, **kwargs):
        _refuse(unsupported_options(args) + (["compute_loss_func"] if kwargs.get("compute_loss_func") else []))
        self.understanding_weight = understanding_weight
        self.adapter_learning_rate = adapter_learning_rate
        # Since the last log, for "train" and "eval", on the device: per task [summed NLL, target tokens] (tasks, 2),
        # and [summed token entropy, top-1 hits, decoder input tokens] (3,). None until the first micro-batch.
        self._task_totals: dict[str, torch.Tensor | None] = {"train": None, "eval": None}
        self._token_totals: dict[str, torch.Tensor | None] = {"train": None, "eval": None}
        self._decoder_tokens = 0.0  # decoder input tokens trained on so far, all processes (TRL's `num_tokens`)
        super().__init__(model, args, *more, **kwargs)
        _refuse(["output_router_logits (a mixture-of-experts auxiliary loss)"] if self.aux_loss_enabled else [])
        self._run_start = _RunStart()
        self.add_callback(self._run_start)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        task = inputs.pop("task")  # (B,); E2LLMModel.forward passes unknown keys on to the decoder
        # TRL's fused LM head: per-token log-probs of the labels without building (B, T, vocab) logits.
        outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        # (B,); ignored positions hold 0. Summed in fp32: under bf16 autocast a bf16 sum of hundreds of log-probs
        # keeps only 3 significant digits.
        per_sample_nll = -outputs.log_probs.float().sum(dim=1)
        per_sample_tokens = outputs.label_mask.sum(dim=1)  # (B,)
        weights = torch.where(task == _UNDERSTANDING_ID, self.understanding_weight, 1.0).to(per_sample_nll.dtype)
        num_tokens = per_sample_tokens.sum() if num_items_in_batch is None else num_items_in_batch
        loss = (weights * per_sample_nll).sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens while DDP averages the gradients.
            loss = loss * self.accelerator.num_processes
        self._record(mode, task, per_sample_nll.detach(), per_sample_tokens, outputs, inputs["attention_mask"])
        return (loss, outputs) if return_outputs else loss

    def _record(self, mode: str, task: torch.Tensor, nll: torch.Tensor, tokens: torch.Tensor, outputs,
                attention_mask: torch.Tensor) -> None:
        """Add this micro-batch's per-task NLL and token counts, token entropy, top-1 hits and decoder input tokens
        (prompt, chunk tokens and target, without padding: TRL's `num_tokens`), summed over processes, to the
        totals on the device. Nothing is read back here: a step that waited for the device to report a number
        would leave it idle while the host prepares the next one (see `log`)."""
        per_task = torch.stack([torch.stack([torch.where(task == t, nll, 0).sum(),
                                             torch.where(task == t, tokens, 0).sum().to(nll.dtype)])
                                for t in range(len(TASKS))])  # (tasks, 2); where, not nll[task == t]: no sync
        per_token = torch.stack([outputs.entropy.detach().float().sum(), outputs.is_top1.sum().float(),
                                 attention_mask.sum().float()])  # (3,)
        for totals, batch in ((self._task_totals, per_task), (self._token_totals, per_token)):
            batch = self.accelerator.reduce(batch, reduction="sum")
            totals[mode] = batch if totals[mode] is None else totals[mode] + batch

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the per-task losses, the token entropy and the top-1 accuracy since the last log: the one point
        where the totals come back from the device."""
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        if self._task_totals[mode] is not None:
            per_task, (entropy, correct, inputs) = self._task_totals[mode].tolist(), self._token_totals[mode].tolist()
            for (nll, tokens), name in zip(per_task, TASKS):
                if tokens > 0:
                    logs[f"{prefix}loss_{name}"] = nll / tokens
            all_tokens = max(1.0, sum(tokens for _, tokens in per_task))
            logs[f"{prefix}entropy"], logs[f"{prefix}mean_token_accuracy"] = entropy / all_tokens, correct / all_tokens
            if mode == "train":
                self._decoder_tokens += inputs
                logs["num_tokens"] = self._decoder_tokens
            self._task_totals[mode] = self._token_totals[mode] = None
        if "train_runtime" in logs:
            # Rated by the steps this run took: transformers 5.17 rates it by max_steps even when a callback (a
            # time budget) ended it sooner; 5.24 counts as here.
            seconds, steps = logs["train_runtime"], self.state.global_step - self._run_start.step
            batch = self._train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            logs["train_steps_per_second"] = round(steps / seconds, 3)
            logs["train_samples_per_second"] = round(steps * batch / seconds, 3)
        super().log(logs, start_time)

    def get_optimizer_cls_and_kwargs(self, args, model=None) -> tuple[type, dict]:
        """TRL's optimizer, and with `adapter_learning_rate` its parameter groups split in two: the adapter's
        parameters (trained from scratch) get their own learning rate, everything else keeps `args`'."""
        optimizer_cls, kwargs = super().get_optimizer_cls_and_kwargs(args, model)
        if self.adapter_learning_rate is None or model is None or "params" in kwargs:
            return optimizer_cls, kwargs
        decay = set(self.get_decay_parameter_names(model))
        groups = {}  # (adapter?, decay?) -> parameters
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((".adapter." in name, name in decay), []).append(parameter)
        kwargs["params"] = [{"params": params, "weight_decay": args.weight_decay if decays else 0.0,
                             **({"lr": self.adapter_learning_rate} if adapter else {})}
                            for (adapter, decays), params in groups.items()]
        return optimizer_cls, kwargs


def _refuse(unsupported: list[str]) -> None:
    if unsupported:
        raise ValueError(f"E2LLMTrainer does not implement {', '.join(unsupported)}: its loss is the task-weighted "
                         "NLL of the target tokens. Leave these at their defaults.")


def unsupported_options(args: SFTConfig) -> list[str]:
    """The SFTConfig settings in `args` that E2LLMTrainer's loss and data path do not implement."""
    ignored = {
        "loss_type": args.loss_type != "nll",  # "dft" reweights TRL's own loss, not this one
        "label_smoothing_factor": args.label_smoothing_factor > 0,
        "max_length": args.max_length is not None,  # samples are never cut; too long ones are refused when built
        "packing": args.packing,  # packing, padding_free and the completion/assistant masks act while TRL
        "padding_free": args.padding_free,  # prepares a dataset, which E2LLM samples skip
        "completion_only_loss": bool(args.completion_only_loss),
        "assistant_only_loss": args.assistant_only_loss,
        "use_liger_kernel": args.use_liger_kernel,
    }
    return [name for name, is_set in ignored.items() if is_set]


class _RunStart(TrainerCallback):
    """The global step a run starts from (after a resumed checkpoint's)."""

    step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step
