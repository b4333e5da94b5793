"""Florence-2 backbone: the transformers-native ``Florence2ForConditionalGeneration`` with mmprompt's tasks.

Florence-2 is a DaViT image encoder whose tokens are scattered into ``<image>`` placeholders at the start
of a BART encoder–decoder's input. Prefix tuning reaches its language model through the same registered
attention function as plain BART (:mod:`mmprompt.tuning.hf`), so ``apply_prefix(backbone.model, config)``
works unchanged; nothing here touches transformers' modeling code.

Florence-2's conventions, as its processor and checkpoints define them:

* prompts: a task token that the processor expands (``<CAPTION>`` → "What does the image describe?",
  ``<CAPTION_TO_PHRASE_GROUNDING>phrase`` → "Locate the phrases in the caption: phrase"), or free text;
  the processor writes ``<image>``×N ``<s>`` prompt ``</s>``;
* boxes: 1000 location tokens ``<loc_0>``…``<loc_999>`` per axis, bin = floor(coordinate / (side / 1000))
  clipped to [0, 999], read back as the bin centre (bin + 0.5) · side / 1000;
* phrase grounding answers "phrase<loc_x0><loc_y0><loc_x1><loc_y1>";
* decoder: starts with ``</s>`` (id 2), the first generated token is forced to ``<s>`` (id 0), generation
  defaults are beam 3 and no-repeat-3-gram.

The four tasks, built from the same OFA-layout TSV rows as OFA's datasets:

=========  ==============================================================  ====================================
task       source prompt                                                   target
=========  ==============================================================  ====================================
refcoco    ``<CAPTION_TO_PHRASE_GROUNDING>`` + expression                   expression + four ``<loc_i>``
caption    ``<CAPTION>``                                                   the caption
vqa        the question ("What color is the circle?")                       the answer
snli_ve    ``Does the image describe "H"?`` (``Can image and text1 "P"       ``yes`` / ``no`` / ``maybe``
           imply text2 "H"?`` with the premise)
=========  ==============================================================  ====================================

Batches follow :mod:`mmprompt.data.collate`'s contract (``input_ids``, ``attention_mask``,
``patch_images`` = the processor's ``pixel_values``, ``patch_masks``, ``decoder_input_ids`` = ``</s> <s>``
+ target, ``target_ids`` = ``<s>`` + target + ``</s>``, ``decoder_prompt_lengths`` = 1, ``task``, ``ids``,
``refs``). :func:`accept_batch_contract` lets the model take those keys directly, so the default loss of
:func:`mmprompt.training.train` trains it. Predictions come from transformers' own ``generate``.

Modules: :mod:`.conventions` (location tokens, prompts, generation defaults), :mod:`.data` (datasets,
batches, model inputs), :mod:`.model` (loading and ``generate``; scoring and
:class:`~mmprompt.experiment.florence2.Florence2Backbone` are in the experiment layer), :mod:`.tiny` (:func:`save_tiny_florence2`: a seeded random Florence-2 with a
locally trained tokenizer that loads offline exactly like a real checkpoint).

>>> from mmprompt.experiment.florence2 import florence2_backbone
>>> backbone = florence2_backbone("path/to/florence2")                       # doctest: +SKIP
>>> apply_prefix(backbone.model, PrefixConfig(length=64))                    # doctest: +SKIP
>>> train_set = backbone.make_dataset("refcoco", "data/refcoco_train.tsv")   # doctest: +SKIP
>>> train(backbone.model, train_set, TrainConfig(...), collate_fn=train_set.collater)  # doctest: +SKIP
>>> backbone.evaluate(backbone.make_dataset("refcoco", "data/refcoco_val.tsv")).score  # doctest: +SKIP
"""

from mmprompt.models.florence2.model import decode_predictions, enable_checkpointing, generate_for_batch, load_florence2
from mmprompt.models.florence2.conventions import (
    GENERATION_DEFAULTS,
    NUM_LOC_BINS,
    box_to_loc_tokens,
    dequantize_box,
    loc_tokens_to_box,
    parse_phrase_grounding,
    quantize_box,
    task_prompt,
)
from mmprompt.models.florence2.data import (
    Florence2TaskDataset,
    accept_batch_contract,
    collate_florence2,
    image_side,
    model_inputs,
)
from mmprompt.models.florence2.tiny import (
    TinyFlorence2Spec,
    build_florence2_processor,
    build_florence2_tokenizer,
    build_tiny_florence2,
    ensure_tiny_florence2,
    save_tiny_florence2,
    tiny_florence2_config,
)

__all__ = [
    "GENERATION_DEFAULTS", "NUM_LOC_BINS", "Florence2TaskDataset", "TinyFlorence2Spec",
    "accept_batch_contract", "box_to_loc_tokens", "build_florence2_processor", "build_florence2_tokenizer",
    "build_tiny_florence2", "collate_florence2", "decode_predictions", "dequantize_box",
    "enable_checkpointing", "ensure_tiny_florence2",
    "generate_for_batch", "image_side", "load_florence2", "loc_tokens_to_box", "model_inputs",
    "parse_phrase_grounding",
    "quantize_box", "save_tiny_florence2", "task_prompt", "tiny_florence2_config",
]
