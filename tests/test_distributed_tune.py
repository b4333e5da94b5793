"""Data-parallel tune: 2 gloo processes score exactly what 1 process scores (sharded evaluation)."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as tmp_mp

from mmprompt import load_model, tune
from mmprompt.eval.distributed import DatasetShard, shard_indices
from mmprompt.tuning import PrefixConfig

EVAL = {"eval_batch_size": 3}  # 8 examples -> batches [0-2] [3-5] [6-7]: rank 0 decodes two, rank 1 one


def _jobs(backbone, data_dir) -> dict:
    """What both the single process and every rank run: zero-shot scoring of a beam-search task and an
    all-candidate task, and a short prefix tuning run with validation during training."""
    out, decoded = {}, []
    evaluate = backbone.evaluate

    def counting(dataset, settings=None, model=None):  # how many examples this process decodes
        n = len(dataset) if settings is None or settings.max_examples is None else settings.max_examples
        decoded.append(min(n, len(dataset)))
        return evaluate(dataset, settings, model=model)

    backbone.evaluate = counting
    for task in ("refcoco", "vqa"):
        r = tune(backbone, task, "zero-shot", data_dir=data_dir, eval_examples=8, recipe=EVAL, progress=False)
        out[f"zero-shot/{task}"] = {"metrics": r.metrics, "predictions": r.predictions}
    r = tune(backbone, "snli_ve", PrefixConfig(length=2, dropout=0.0), data_dir=data_dir, steps=2, batch_size=2,
             eval_examples=8, keep_model=True, recipe={**EVAL, "eval_every": 1}, progress=False)
    prefix = {n: p.detach().flatten()[:6].tolist() for n, p in r.model.named_parameters() if p.requires_grad}
    out["prefix/snli_ve"] = {"metrics": r.metrics, "predictions": r.predictions, "prefix": prefix,
                             "evals": sum(h.get("event") == "eval" for h in r.history)}
    # finetuning leaves some parameters unused (OFA's image-code embeddings): DDP must be told
    r = tune(backbone, "refcoco", "finetune", data_dir=data_dir, steps=2, batch_size=2, eval_examples=8,
             test_splits=False, recipe=EVAL, progress=False)
    out["finetune/refcoco"] = {"metrics": r.metrics, "steps": r.steps}
    return {"results": out, "decoded": decoded}


def _worker(rank: int, world: int, port: int, model_dir: str, data_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        result = _jobs(load_model(model_dir), data_dir)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(random_ofa_dir):
    return random_ofa_dir


def test_two_gloo_processes_score_what_one_process_scores(model_dir, tiny_synthetic, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = json.loads(json.dumps(_jobs(load_model(model_dir), tiny_synthetic)))
    finally:
        torch.set_num_threads(before)
    tmp_mp.spawn(_worker, args=(2, _free_port(), str(model_dir), str(tiny_synthetic), str(tmp_path)), nprocs=2,
                 join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # the work is split: per evaluated split, rank 0 decodes batches [0-2] and [6-7], rank 1 batch [3-5]
    assert set(single["decoded"]) == {8} and len(ranks[0]["decoded"]) == len(single["decoded"])
    assert set(ranks[0]["decoded"]) == {5} and set(ranks[1]["decoded"]) == {3}
    single, ranks = single["results"], [r["results"] for r in ranks]
    assert ranks[0] == ranks[1]  # every rank returns the whole result, and the same model
    for task in ("refcoco", "vqa"):
        key = f"zero-shot/{task}"
        assert len(ranks[0][key]["predictions"]) == 8
        assert [p["id"] for p in ranks[0][key]["predictions"]] == [p["id"] for p in single[key]["predictions"]]
        assert ranks[0][key] == single[key], key  # same predictions in the same order, same metrics
    trained = ranks[0]["prefix/snli_ve"]
    assert trained["evals"] == single["prefix/snli_ve"]["evals"] == 2
    assert len(trained["predictions"]) == 8 and set(trained["metrics"]) == {"dev", "test"}
    assert ranks[0]["finetune/refcoco"]["steps"] == 2


def test_shards_are_whole_single_process_batches_dealt_round_robin():
    shards = [shard_indices(8, 3, r, 2) for r in range(2)]
    assert shards == [[0, 1, 2, 6, 7], [3, 4, 5]]
    assert sorted(shards[0] + shards[1]) == list(range(8))
    assert shard_indices(2, 3, 1, 2) == []  # more ranks than batches: an idle rank
    assert [shard_indices(10, 2, r, 3) for r in range(3)] == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5]]
    with pytest.raises(ValueError, match="rank=2"):
        shard_indices(8, 3, 2, 2)


def test_dataset_shard_delegates_to_its_dataset():
    class Data(list):
        task, collater = "vqa", staticmethod(lambda b: b)

    shard = DatasetShard(Data("abcdef"), [4, 1])
    assert len(shard) == 2 and [shard[0], shard[1]] == ["e", "b"]
    assert shard.task == "vqa" and shard.collater([1]) == [1]


def test_tune_cli_writes_the_result_on_rank_0_only(model_dir, tiny_synthetic, tmp_path, monkeypatch):
    from mmprompt.experiment import cli as tune_cli

    argv = ["--model-dir", str(model_dir), "--data-dir", str(tiny_synthetic), "--task", "snli_ve", "--method",
            "zero-shot", "--profile", "ci", "--eval-examples", "2", "--no-test-splits", "--recipe",
            '{"eval_batch_size": 1}']
    assert tune_cli.main([*argv, "--out", str(tmp_path / "rank0.json")]) == 0
    record = json.loads((tmp_path / "rank0.json").read_text())
    assert record["task"] == "snli_ve" and len(record["predictions"]) == 2 and record["recipe"] == {"eval_batch_size": 1}
    monkeypatch.setattr(tune_cli, "is_main_process", lambda: False)
    assert tune_cli.main([*argv, "--out", str(tmp_path / "rank1.json")]) == 0
    assert not (tmp_path / "rank1.json").exists()
    assert tune_cli.main([*argv[:-2], "--recipe", "[1]"]) == 2  # bad input: refused, nothing run
