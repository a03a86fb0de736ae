"""Every option a user can set is pinned: some test sets it away from its default and fails if the option is ignored.

``OPTION_PINS`` maps each typed option, named as a user writes it, to the test that pins it.  The options are collected
from the typed blocks themselves (``dataclasses.fields``, recursively), so an option added without a pin fails here, as
does a pin whose test was renamed, moved or no longer names its option.  Names: ``model.<field>`` for GLSCL's
``GlsclConfig`` and the checkpoint keys every model takes, ``run.<key>`` for the ``run`` block (``RetrievalOptions`` and
``PlateauRule`` are read from it), ``albef_glscl_pretrain:model.<field>`` for ALBEF + GLSCL's ``CompletionOptions``,
``matching_dual_encoder:model.<field>`` for the dual encoder's ``DualEncoderConfig``,
and ``matching.<kind>.<name>.<option>`` for the options a matching part is built with (``matching.build``).
"""
import ast
import dataclasses
import inspect
import typing
from functools import cache

from helpers import REPO

UNIT = "tests/unit"
GLSCL = f"{UNIT}/models/glscl"
RUNNER = f"{UNIT}/runners/test_runner.py"

SIZES = f"{GLSCL}/test_base.py::test_tower_size_options_build_towers_of_those_sizes"
FUSION_SIZES = f"{GLSCL}/test_base.py::test_fusion_size_options_and_itc_temperature_build_modules_of_those_sizes"
DUAL = f"{UNIT}/models/baselines/test_dual_encoder.py"
TEXT_DIRECTORY = (f"{GLSCL}/test_base.py::"
                  "test_text_path_names_the_local_directory_whose_weights_load_only_when_pretrained")
COMPLETION = (f"{GLSCL}/test_pretrain.py::"
              "test_completion_mask_ratios_temperatures_and_exact_text_masking_follow_their_options")
WEIGHTED_TOTAL = f"{GLSCL}/test_pretrain.py::test_output_has_every_objective_and_the_weighted_total"
CHECKPOINTS = f"{UNIT}/models/test_base.py::test_load_finetuned_picks_the_finetuned_checkpoint_over_the_pretrained_one"
OPTIMIZER = f"{RUNNER}::test_optimizer_and_schedule_run_options_reach_adamw_and_every_steps_lr"
LOADERS = f"{RUNNER}::test_ddp_and_loader_options_reach_the_wrapped_model_and_the_loaders"
SPLITS = f"{RUNNER}::test_split_options_choose_what_the_runner_trains_validates_and_tests"
PLATEAU = f"{RUNNER}::test_a_plateau_stops_the_run_records_its_steps_and_tests_the_model"
RERANK = (f"{UNIT}/models/test_scoring.py::"
          "test_run_options_set_the_shortlist_its_pair_batches_the_itc_term_and_the_scorer")
RESUME = "tests/integration/test_resume.py::test_resume_continues_exactly_at_epoch_end_and_mid_epoch"
JOB = f"{UNIT}/runners/test_job.py::test_a_named_job_that_exists_is_refused_unless_it_resumes"
NORMALISED = f"{UNIT}/test_tasks.py::test_score_normaliser_names_are_checked"
LOSSES = f"{UNIT}/matching/test_losses.py"
MARGIN_ZERO = f"{LOSSES}::test_a_margin_of_zero_is_a_margin_and_not_the_default"
WIDE_HINGE = f"{LOSSES}::test_hinge_losses_on_a_non_square_positives_mask_by_hand"
WIDE_UNIFIED = f"{LOSSES}::test_info_nce_and_unified_loss_on_a_non_square_positives_mask_by_hand"
BUILT_PARTS = f"{LOSSES}::test_built_parts_bind_their_options"
SIMILARITY = f"{UNIT}/matching/test_similarity.py"
SCAN = f"{SIMILARITY}::test_scan_direction_and_its_lambdas_by_hand"
CHUNKS = f"{SIMILARITY}::test_chunk_size_scores_that_many_images_per_chunk"

VISION_OPTIONS = ("image_size", "patch_size", "width", "layers", "heads", "max_frames", "mlp_ratio", "activation",
                  "temporal_init")

OPTION_PINS = {
    # GlsclConfig: the towers, the fusion and the ITC heads
    **{f"model.vision.{name}": SIZES for name in VISION_OPTIONS},
    "model.text.path": TEXT_DIRECTORY,
    "model.text.pretrained": TEXT_DIRECTORY,
    "model.text.config_overrides": SIZES,
    "model.text.max_length": SIZES,
    **{f"model.fusion.{name}": FUSION_SIZES for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                                                   "dropout")},
    "model.embed_dim": SIZES,
    "model.itc_temperature": FUSION_SIZES,
    "model.vision_init.path": f"{UNIT}/test_serialization.py::"
                              "test_an_openai_clip_torchscript_archive_loads_through_vision_init_to_torchs_own_tensors",
    "model.vision_init.format": f"{UNIT}/models/test_weights.py::"
        "test_vision_init_format_hf_and_trust_checkpoint_reach_the_vit",
    "model.vision_init.trust_checkpoint": f"{UNIT}/models/test_weights.py::"
                                          "test_vision_init_format_hf_and_trust_checkpoint_reach_the_vit",
    "model.vision_init.min_coverage": f"{UNIT}/models/test_weights.py::"
                                      "test_vision_init_refuses_weights_that_fill_too_little_of_the_vit",
    # GlsclConfig: objectives and their options
    **{f"model.loss_weights.{name}": WEIGHTED_TOTAL for name in ("itc", "itm", "mlm", "mgsc", "mltc")},
    "model.loss_weights.rank": f"{GLSCL}/test_retrieval.py::"
        "test_released_rank_recipe_scores_a_caption_against_its_negatives",
    "model.group_contrast.weight": f"{GLSCL}/test_group_contrast.py::"
        "test_itc_group_contrasts_each_clip_with_its_group_partners_caption_only_in_grouped_batches",
    "model.group_contrast.temperature": f"{GLSCL}/test_group_contrast.py::"
                                        "test_fixed_group_temperature_replaces_itcs_learnable_one_in_both_group_terms",
    "model.group_contrast.detach_text": f"{GLSCL}/test_group_contrast.py::"
                                        "test_itc_group_detach_text_trains_only_the_visual_side_with_the_group_term",
    "model.group_contrast.text_margin": f"{GLSCL}/test_group_contrast.py::"
                                        "test_group_text_margin_of_zero_hinges_every_positive_cosine_by_hand",
    "model.video_completion.mgsc": f"{GLSCL}/test_pretrain.py::"
        "test_video_completion_mgsc_off_drops_mgsc_from_video_batches_only",
    "model.video_completion.mltc": f"{GLSCL}/test_pretrain.py::test_video_batches_train_with_per_frame_mgsc",
    "model.itm_negatives": f"{GLSCL}/test_pretrain.py::"
                           "test_itm_negative_rows_fuse_their_caption_with_that_captions_own_padding_mask",
    "model.video_layout": f"{GLSCL}/test_pretrain.py::"
        "test_video_layout_cthw_reads_channel_first_video_batches_as_the_same_clips",
    "model.mlm_probability": f"{GLSCL}/test_pretrain.py::"
                             "test_mlm_probability_sets_how_many_maskable_tokens_of_each_caption_are_selected",
    "model.mgsc_image_mask_ratio": COMPLETION,
    "model.mgsc_text_mask_ratio": COMPLETION,
    "model.mgsc_text_mask_with_replacement": COMPLETION,
    "model.mgsc_temperature": COMPLETION,
    "model.mltc_image_mask_ratio": COMPLETION,
    "model.mltc_temperature": COMPLETION,
    # one process gathers nothing: only two processes matching one with their global batch can tell
    "model.mltc_image_gather": "tests/integration/test_distributed.py::"
                               "test_torchrun_two_processes_match_one_process_with_the_same_global_batch",
    "model.share_unimodal_passes": f"{GLSCL}/test_pretrain.py::test_sharing_computes_each_distinct_unimodal_pass_once",
    "model.grad_checkpointing": f"{UNIT}/models/layers/test_activation_checkpointing.py::"
                                "test_every_layer_is_recomputed_only_when_checkpointed",
    "model.mask_seed": f"{GLSCL}/test_pretrain.py::test_mask_seed_chooses_the_steps_masks",
    "model.rank_negatives": f"{GLSCL}/test_retrieval.py::"
        "test_rank_loss_scores_the_own_caption_as_candidate_0_and_targets_it",
    "model.lr_scales": f"{UNIT}/test_optims.py::"
        "test_nested_lr_scales_prefixes_give_each_parameter_its_longest_prefixs_scale",
    "model.freeze": f"{UNIT}/models/test_base.py::"
        "test_freeze_prefixes_stop_exactly_the_parameters_they_name_from_training",
    "model.answer_list": f"{GLSCL}/test_vqa_loss.py::"
        "test_vqa_loss_is_mean_binary_cross_entropy_times_the_number_of_answers",
    # the checkpoint keys every model takes (lavis_glscl.models.base.CHECKPOINT_KEYS)
    "model.pretrained": CHECKPOINTS,
    "model.finetuned": CHECKPOINTS,
    "model.load_finetuned": CHECKPOINTS,
    "model.trust_checkpoint": f"{UNIT}/test_serialization.py::"
        "test_checkpoints_holding_arbitrary_objects_load_only_when_trusted",
    "model.min_checkpoint_coverage": f"{UNIT}/models/test_weights.py::"
                                     "test_min_checkpoint_coverage_sets_the_share_a_checkpoint_must_fill",
    # ALBEF + GLSCL's completion objectives
    **{f"albef_glscl_pretrain:model.loss_weights.{name}": f"{UNIT}/models/baselines/test_albef_glscl.py::"
        "test_completion_objectives_add_to_albef_and_train_every_parameter"
       for name in ("mgsc", "mltc")},
    **{f"albef_glscl_pretrain:model.{name}": f"{UNIT}/models/baselines/test_albef_glscl.py::"
        "test_completion_mask_ratios_and_temperature_follow_their_options"
       for name in ("mgsc_image_mask_ratio", "mgsc_text_mask_ratio", "completion_temperature")},
    # the matching toolkit's dual encoder
    **{f"matching_dual_encoder:model.{name}": SIZES
       for name in (*(f"vision.{name}" for name in VISION_OPTIONS), "text.config_overrides", "text.max_length",
                    "embed_dim", "freeze")},
    "matching_dual_encoder:model.text.path": TEXT_DIRECTORY,
    "matching_dual_encoder:model.text.pretrained": TEXT_DIRECTORY,
    "matching_dual_encoder:model.loss": f"{DUAL}::test_dual_encoder_trains_with_every_loss",
    "matching_dual_encoder:model.loss_options": f"{DUAL}::test_dual_encoder_loss_is_the_toolkit_loss_on_cosines_with_"
                                                "its_own_options",
    **{f"matching_dual_encoder:model.{name}": f"{DUAL}::test_dual_encoder_scores_add_the_weighted_head_to_the_cosines"
       for name in ("similarity_head", "similarity_head_options", "head_weight")},
    # the run block
    "run.task": f"{RUNNER}::test_run_task_and_runner_name_the_registered_classes_that_are_built",
    "run.runner": f"{RUNNER}::test_run_task_and_runner_name_the_registered_classes_that_are_built",
    "run.seed": f"{RUNNER}::test_run_seed_sets_the_training_batches",
    "run.evaluate": f"{RUNNER}::test_evaluate_true_trains_nothing",
    **{f"run.{name}": OPTIMIZER for name in ("device", "output_dir", "batch_size_train", "lr_sched", "init_lr",
                                              "min_lr", "warmup_lr", "weight_decay", "beta2", "max_epoch", "adam_eps",
                                              "warmup_ratio", "iters_per_epoch")},
    **{f"run.{name}": LOADERS for name in ("num_workers", "batch_size_eval", "use_dist_eval_sampler",
                                            "find_unused_parameters")},
    **{f"run.{name}": SPLITS for name in ("train_splits", "valid_splits", "test_splits")},
    "run.warmup_steps": f"{RUNNER}::test_warmup_steps_and_lr_decay_rate_reach_the_scheduler",
    "run.lr_decay_rate": f"{RUNNER}::test_warmup_steps_and_lr_decay_rate_reach_the_scheduler",
    "run.accum_grad_iters": f"{RUNNER}::"
        "test_accumulation_steps_the_optimizer_every_n_micro_steps_and_flushes_at_the_epoch_end",
    "run.log_freq": f"{RUNNER}::test_log_freq_logs_every_nth_step_and_the_last",
    "run.amp": f"{RUNNER}::test_amp_with_bfloat16_runs_each_step_under_autocast_in_bfloat16",
    "run.amp_dtype": f"{RUNNER}::test_amp_with_bfloat16_runs_each_step_under_autocast_in_bfloat16",
    "run.resume_ckpt_path": RESUME,
    "run.save_freq_iters": RESUME,
    "run.train_dataset_ratios": f"{RUNNER}::test_runner_mixes_shards_with_map_style_data_in_proportion",
    "run.dist_url": f"{UNIT}/test_distributed.py::test_dist_url_and_dist_timeout_minutes_start_the_process_group",
    "run.dist_timeout_minutes": f"{UNIT}/test_distributed.py::"
        "test_dist_url_and_dist_timeout_minutes_start_the_process_group",
    "run.keep_last_checkpoints": f"{RUNNER}::test_keep_last_checkpoints_prunes_older_epoch_checkpoints",
    "run.max_grad_norm": f"{RUNNER}::"
        "test_gradients_are_clipped_to_max_grad_norm_and_the_norm_before_clipping_is_logged",
    "run.plateau.metric": PLATEAU,
    "run.plateau.window": PLATEAU,
    "run.plateau.min_delta": PLATEAU,
    "run.plateau.relative": f"{UNIT}/test_stopping.py::"
        "test_plateau_rule_stops_when_the_last_window_does_not_beat_the_earlier_best",
    "run.auto_resume": JOB,
    "run.job_id": JOB,
    **{f"run.{name}": RERANK for name in ("k_test", "itm_pairs_per_batch", "rerank_add_itc", "retrieval_scorer")},
    "run.score_normalizer": NORMALISED,
    "run.score_normalizer_options": NORMALISED,
    "run.agg_metric": f"{UNIT}/test_tasks.py::test_agg_metric_names_the_figure_reported_as_agg_metrics",
    "run.max_box_fraction": f"{UNIT}/align_bench/test_task.py::"
        "test_max_box_fraction_reaches_the_scoring_of_every_image",
    # the matching parts
    "matching.loss.sum_margin.margin": MARGIN_ZERO,
    "matching.loss.sum_margin.reduction": WIDE_HINGE,
    "matching.loss.vse++.margin": MARGIN_ZERO,
    "matching.loss.vse++.reduction": MARGIN_ZERO,
    "matching.loss.knn_margin.k": BUILT_PARTS,
    "matching.loss.knn_margin.margin": MARGIN_ZERO,
    "matching.loss.knn_margin.reduction": f"{LOSSES}::"
        "test_knn_margin_recovers_vse_plus_plus_and_sum_margin_on_random_matrices",
    "matching.loss.infonce.temperature": BUILT_PARTS,
    "matching.loss.unified.gamma": WIDE_UNIFIED,
    "matching.loss.unified.margin": WIDE_UNIFIED,
    "matching.loss.unified.reduction": WIDE_UNIFIED,
    "matching.similarity_head.scan.direction": SCAN,
    "matching.similarity_head.scan.lambda_softmax": SCAN,
    "matching.similarity_head.scan.lambda_lse": SCAN,
    "matching.similarity_head.scan.aggregation": SCAN,
    "matching.similarity_head.scan.chunk_size": CHUNKS,
    "matching.similarity_head.token_max_sum.mode": f"{SIMILARITY}::test_token_max_sum_and_mean_on_hand_example",
    "matching.similarity_head.token_max_sum.reduction": f"{SIMILARITY}::test_token_max_sum_and_mean_on_hand_example",
    "matching.similarity_head.token_max_sum.chunk_size": CHUNKS,
    "matching.similarity_head.tokenflow.temperature": f"{SIMILARITY}::test_tokenflow_limits_on_hand_example",
    "matching.similarity_head.tokenflow.chunk_size": CHUNKS,
    "matching.score_normalizer.inverted_softmax.beta": f"{UNIT}/matching/test_normalizers.py::"
                                                       "test_inverted_softmax_demotes_the_hub",
    **{f"matching.score_normalizer.qb_norm.{name}": f"{UNIT}/matching/test_normalizers.py::"
        "test_querybank_normalise_only_touches_queries_landing_on_querybank_hits"
       for name in ("beta", "k")},
}

# Keys of RunOptions that lavis_glscl never reads from the yaml, with why.
NOT_LAVIS_GLSCL_RUN_KEYS = {
    "distributed": "written from the launcher's environment by init_distributed; a yaml value is overwritten",
    "rank": "written from the launcher's environment by init_distributed; a yaml value is overwritten",
    "world_size": "written from the launcher's environment; the runner asks the process group, never the yaml",
    "gpu": "written from the launcher's environment by init_distributed; a yaml value is overwritten",
    "dist_backend": "written by init_distributed (nccl on CUDA, gloo on CPU); a yaml value is overwritten",
    "max_iters": "read only by LAVIS's runner_iter",
    "iters_per_inner_epoch": "read only by LAVIS's runner_iter",
    **{key: "read only by LAVIS's own tasks (captioning, VQA, dialogue, PNP-VQA)"
       for key in ("max_len", "min_len", "num_beams", "num_ans_candidates", "inference_method", "prompt",
                   "report_metric", "block_num", "cap_max_length", "cap_min_length", "internal_bsz_fid",
                   "num_captions", "num_captions_fid", "num_patches", "repetition_penalty", "top_k", "top_p")},
}
# Arguments of the matching parts that are their inputs (tensors), not options a part is built with.
MATCHING_INPUTS = {"sim", "positives", "image_tokens", "text_tokens", "image_mask", "text_mask", "scores",
                   "querybank_scores"}


def dataclass_of(annotation):
    """The dataclass a field holds (itself, or inside ``Optional``), or None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    present = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return present[0] if len(present) == 1 and dataclasses.is_dataclass(present[0]) else None


def walk(cls, prefix: str):
    """The dotted names of ``cls``'s user-settable fields (``init=False`` ones are state), nested blocks walked."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        nested = dataclass_of(hints[field.name])
        if nested is not None:
            yield from walk(nested, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}"


def typed_options() -> set:
    import importlib
    import pkgutil

    from lavis_glscl import matching
    from lavis_glscl.models.base import CHECKPOINT_KEYS
    from lavis_glscl.models.baselines.albef_glscl import CompletionOptions
    from lavis_glscl.models.baselines.dual_encoder import DualEncoderConfig
    from lavis_glscl.models.glscl.config import GlsclConfig
    from lavis_glscl.models.scoring import RetrievalOptions
    from lavis_glscl.runners.options import RunOptions

    options = {*walk(GlsclConfig, "model."), *(f"model.{key}" for key in CHECKPOINT_KEYS)}
    options |= set(walk(CompletionOptions, "albef_glscl_pretrain:model."))
    options |= set(walk(DualEncoderConfig, "matching_dual_encoder:model."))
    options |= {name for name in walk(RunOptions, "run.") if name.split(".")[1] not in NOT_LAVIS_GLSCL_RUN_KEYS}
    options |= set(walk(RetrievalOptions, "run."))  # the run keys the scorer reads: one name with the run's
    for module in pkgutil.iter_modules(matching.__path__):
        for _, cls in inspect.getmembers(importlib.import_module(f"lavis_glscl.matching.{module.name}"),
                                         dataclasses.is_dataclass):
            options |= set(walk(cls, f"matching.{cls.__name__}."))
    for kind, parts in matching.PARTS.items():
        for name, function in parts.items():
            options |= {f"matching.{kind}.{name}.{parameter}" for parameter in inspect.signature(function).parameters
                        if parameter not in MATCHING_INPUTS}
    return options


@cache
def functions_in(path: str) -> dict:
    """``{name: source}`` of the module-level test functions of the file ``path`` (decorators included)."""
    text = (REPO / path).read_text()
    lines = text.splitlines()
    functions = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef):
            first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
            functions[node.name] = "\n".join(lines[first - 1:node.end_lineno])
    return functions


def test_every_typed_option_has_a_pin_and_every_pin_an_option(lavis_glscl):
    """The options walked from the typed blocks are exactly the pinned ones: a new option needs a pin, a removed one
    takes its pin along; the run keys left out are real keys of the run block."""
    from lavis_glscl.runners.options import RunOptions

    options = typed_options()
    assert sorted(options - set(OPTION_PINS)) == [], "options without a pinning test"
    assert sorted(set(OPTION_PINS) - options) == [], "pins of options that do not exist"
    assert set(NOT_LAVIS_GLSCL_RUN_KEYS) <= {field.name for field in dataclasses.fields(RunOptions)}


def test_every_pin_is_a_test_function_that_names_its_option():
    """Each pin's file exists, defines the test function, and the function (with its decorators) names the option's
    last part."""
    problems = []
    for option, node_id in OPTION_PINS.items():
        path, _, function = node_id.partition("::")
        if not path.startswith("tests/") or not (REPO / path).is_file():
            problems.append(f"{option}: no test file {path}")
            continue
        source = functions_in(path).get(function)
        if source is None or not function.startswith("test_"):
            problems.append(f"{option}: {path} has no test function {function}")
            continue
        leaf = option.rsplit(".", 1)[-1]
        if leaf not in source:
            problems.append(f"{option}: {node_id} never mentions {leaf!r}")
    assert problems == []
