"""Data: the synthetic world, OFA's task formats, TSV files, tokenizers, preprocessing and batching.

Typical use::

    from mmprompt.data import ensure_synthetic, load_tokenizer, TaskDataset, collate_batch, split_path
    root = ensure_synthetic("ci")                       # data/synthetic/ci, generated once
    tok = load_tokenizer(root / "tokenizer")
    ds = TaskDataset(split_path(root, "refcoco", "train"), "refcoco", tok, patch_image_size=64)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, collate_fn=collate_batch)

See ``data/README.md`` for the world, the tasks, the splits, the shift and the TSV layouts.
"""

from mmprompt.data.boxes import (
    bins_to_box,
    box_to_bins,
    box_to_tokens,
    dequantize,
    iou,
    quantize,
    scale_box,
    tokens_to_box,
)
from mmprompt.data.collate import (PretrainDataset, TaskDataset, collate_batch, collate_mixed, load_answer_list,
                                   pad_sequences)
from mmprompt.data.preprocess import IMAGE_MEAN, IMAGE_STD, denormalize, preprocess_image, resize_square
from mmprompt.data.tasks import (
    CAPTION_INSTRUCTION,
    DEFAULT_PROMPT_TYPE,
    PROMPT_TYPES,
    TASK_SPECS,
    TASKS,
    TaskSpec,
    REFCOCO_INSTRUCTION,
    VE_ANSWERS,
    VE_INSTRUCTION,
    VE_LABEL_TO_ANSWER,
    VE_PREMISE_INSTRUCTION,
    Encoded,
    Trie,
    answer_ids,
    build_trie,
    clean_caption_target,
    constraint_mask,
    encode_pair,
    normalize_answer,
    pre_caption,
    pre_question,
    refcoco_source,
    snli_ve_source,
    vqa_answer_list,
    vqa_confidence,
    vqa_source,
    vqa_target_answer,
)
from mmprompt.data.texts import PRETRAIN_SUBTASKS, VQA_ANSWERS
from mmprompt.data.tokenizer import (
    BOS,
    EOS,
    PAD,
    UNK,
    OFATokenizer,
    bin_token_ids,
    build_ofa_tokenizer,
    decode_ids,
    encode_text,
    id_to_bin,
    load_tokenizer,
    num_bins_of,
    train_nano_tokenizer,
)
from mmprompt.data.tsv import (
    LAYOUTS,
    TSVFormatError,
    TSVReader,
    count_rows,
    decode_image,
    encode_image,
    read_tsv,
    write_tsv,
)
from mmprompt.data.world import HELD_OUT_COMBOS, Scene, SceneConfig, render_scene, sample_scene, scene_rng

# ``synth`` is imported lazily so that ``python -m mmprompt.data.synth`` runs it cleanly (no double import).
_SYNTH_NAMES = frozenset(
    {
        "PROFILES",
        "SPLITS",
        "Profile",
        "WorldSettings",
        "Item",
        "build_tokenizer",
        "dataset_name",
        "default_data_root",
        "make_item",
        "tokenizer_corpus",
        "ensure_synthetic",
        "generate",
        "read_manifest",
        "split_path",
    }
)


def __getattr__(name: str):
    if name in _SYNTH_NAMES:
        from mmprompt.data import synth

        return getattr(synth, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Item",
    "default_data_root",
    "make_item",
    "tokenizer_corpus",
    "answer_ids",
    "bin_token_ids",
    "bins_to_box",
    "BOS",
    "box_to_bins",
    "box_to_tokens",
    "build_ofa_tokenizer",
    "build_tokenizer",
    "build_trie",
    "CAPTION_INSTRUCTION",
    "clean_caption_target",
    "collate_batch",
    "collate_mixed",
    "constraint_mask",
    "count_rows",
    "dataset_name",
    "decode_ids",
    "decode_image",
    "DEFAULT_PROMPT_TYPE",
    "denormalize",
    "dequantize",
    "TASK_SPECS",
    "TASKS",
    "TaskSpec",
    "encode_image",
    "encode_pair",
    "encode_text",
    "Encoded",
    "ensure_synthetic",
    "EOS",
    "generate",
    "HELD_OUT_COMBOS",
    "id_to_bin",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "iou",
    "LAYOUTS",
    "load_answer_list",
    "load_tokenizer",
    "normalize_answer",
    "num_bins_of",
    "OFATokenizer",
    "PAD",
    "pad_sequences",
    "pre_caption",
    "pre_question",
    "preprocess_image",
    "PRETRAIN_SUBTASKS",
    "PretrainDataset",
    "Profile",
    "PROFILES",
    "PROMPT_TYPES",
    "quantize",
    "read_manifest",
    "read_tsv",
    "REFCOCO_INSTRUCTION",
    "refcoco_source",
    "render_scene",
    "resize_square",
    "sample_scene",
    "scale_box",
    "Scene",
    "scene_rng",
    "SceneConfig",
    "snli_ve_source",
    "split_path",
    "SPLITS",
    "TaskDataset",
    "tokens_to_box",
    "train_nano_tokenizer",
    "Trie",
    "TSVFormatError",
    "TSVReader",
    "UNK",
    "VE_ANSWERS",
    "VE_INSTRUCTION",
    "VE_LABEL_TO_ANSWER",
    "VE_PREMISE_INSTRUCTION",
    "vqa_answer_list",
    "VQA_ANSWERS",
    "vqa_confidence",
    "vqa_source",
    "vqa_target_answer",
    "WorldSettings",
    "write_tsv",
]
