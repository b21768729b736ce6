"""model=llm_ranker (TALLRec): the prompt is TALLRec's, P(Yes) and the loss are the causal LM's own, zero-shot
trains nothing, adapters train, save and reload.

References: TALLRec's released ``data/movie/test.json`` (records quoted below), and transformers'
``LlamaForCausalLM`` run on each prompt alone (no padding). The packaged SmolLM2 is checked against its own
``generate`` in the slow test."""
from __future__ import annotations

import pytest
import torch
from helpers import CONF, context, save_tiny_causal_llama
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

from recexp.config import build
from recexp.errors import ConfigError
from recexp.evaluate import Evaluator
from recexp.interfaces import TRAIN
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.llm_ranker import LLMRanker
from recexp.scenarios import TallRecScenario, build_or_load
from recexp.strategies import Frozen

pytestmark = pytest.mark.usefixtures("one_thread")

# TALLRec's data/movie/test.json, records 0, 1, 27 (nothing disliked) and 155 (nothing liked): input, output
TALLREC_TEST = {
    0: ('User Preference: "Paris, Texas (1984)", "Rebel Without a Cause (1955)", "Return of the Pink Panther, The (1974)", '
        '"Ace Ventura: Pet Detective (1994)", "Magnificent Seven, The (1954)", "Star Trek: The Wrath of Khan (1982)", '
        '"Cat People (1982)", "Orlando (1993)", "Dave (1993)"\nUser Unpreference: "Kalifornia (1993)"\n'
        'Whether the user will like the target movie "Perez Family, The (1995)"?', "No."),
    1: ('User Preference: "Rebel Without a Cause (1955)", "Return of the Pink Panther, The (1974)", '
        '"Ace Ventura: Pet Detective (1994)", "Magnificent Seven, The (1954)", "Star Trek: The Wrath of Khan (1982)", '
        '"Cat People (1982)", "Orlando (1993)", "Dave (1993)"\nUser Unpreference: "Kalifornia (1993)", '
        '"Perez Family, The (1995)"\nWhether the user will like the target movie "Jurassic Park (1993)"?', "Yes."),
    27: ('User Preference: "Birdcage, The (1996)", "Meet Me in St. Louis (1944)", "Barbarella (1968)", "Widows\' Peak (1994)", '
         '"Harold and Maude (1971)", "Seventh Seal, The (Sjunde inseglet, Det) (1957)", "Batman (1989)", '
         '"Naked Gun 33 1/3: The Final Insult (1994)", "Around the World in 80 Days (1956)", "Get Shorty (1995)"\n'
         'User Unpreference: \nWhether the user will like the target movie "Waiting to Exhale (1995)"?', "No."),
    155: ('User Preference: \nUser Unpreference: "Princess Bride, The (1987)", "Four Weddings and a Funeral (1994)", '
          '"Terminator 2: Judgment Day (1991)", "Last of the Mohicans, The (1992)", "Heat (1995)", '
          '"Natural Born Killers (1994)", "Time to Kill, A (1996)", "Quiz Show (1994)", "Independence Day (ID4) (1996)", '
          '"When Harry Met Sally... (1989)"\nWhether the user will like the target movie "Better Off Dead... (1985)"?', "No."),
}
INSTRUCTION = ('Given the user\'s preference and unpreference, identify whether the user will like the target movie by '
               'answering "Yes." or "No.".')
ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. Write a "
          "response that appropriately completes the request.  # noqa: E501\n\n### Instruction:\n{instruction}\n\n"
          "### Input:\n{input}\n\n### Response:\n")  # TALLRec's templates/alpaca.json, prompt_input


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    return save_tiny_causal_llama(tmp_path_factory.mktemp("tiny-causal"))


@pytest.fixture(scope="module")
def tallrec(ml100k, cache_dir):
    return build_or_load(ml100k, TallRecScenario(shots=16), 0, cache_dir)


def ranker(path, cache_dir, strategy="frozen", *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["scenario=tallrec", "model=llm_ranker", f"strategy={strategy}", f"cache_dir={cache_dir}",
                                           f"encoder.name_or_path={path}", "progress=false", *overrides])
    return build(cfg.model, trainer=build(cfg.trainer))


def test_prompts_are_tallrecs_record_for_record(tiny_causal, tallrec, cache_dir):
    module = ranker(tiny_causal, cache_dir).module
    assert not module.chat  # the tiny model's tokenizer has no chat template: TALLRec's Alpaca template
    module.prepare(tallrec, torch.device("cpu"))
    test, table = tallrec.parts["test"], module.tables["test"]
    for record, (text, answer) in TALLREC_TEST.items():
        row = test.iloc[record]
        history, labels = table.gather(table.rows(torch.tensor([row["user"]]), torch.tensor([row["item"]])))
        prompt = module.prompt(history[0].tolist(), labels[0].tolist(), int(row["item"]))
        assert prompt == ALPACA.format(instruction=INSTRUCTION, input=text)
        assert ("Yes." if row["label"] == 1 else "No.") == answer


def test_chat_models_get_the_question_in_their_chat_template(tiny_causal, tallrec, cache_dir):
    module = ranker(tiny_causal, cache_dir).module
    module.encoder.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    module.chat = True
    module.prepare(tallrec, torch.device("cpu"))
    row = tallrec.parts["test"].iloc[0]
    table = module.tables["test"]
    history, labels = table.gather(table.rows(torch.tensor([row["user"]]), torch.tensor([row["item"]])))
    prompt = module.prompt(history[0].tolist(), labels[0].tolist(), int(row["item"]))
    assert prompt == f"<user>{INSTRUCTION}\n{TALLREC_TEST[0][0]}<assistant>"


def yes_probability_alone(model, ids: list[int], yes_no: list[int]) -> float:
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1, yes_no]
    return float(torch.softmax(logits, -1)[0])


@torch.no_grad()
def test_p_yes_is_the_causal_lms_softmax_over_yes_and_no_for_each_prompt_alone(tiny_causal, tallrec, cache_dir):
    recommender = ranker(tiny_causal, cache_dir, "frozen", "encoder.batch_size=7")
    module = recommender.module
    recommender.fit(tallrec, context(cache_dir))  # zero-shot: prepares, trains nothing
    test = tallrec.parts["test"].iloc[:20]
    users, items = torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy())
    scores = recommender.score_pairs(users, items, "test")
    reference = AutoModelForCausalLM.from_pretrained(tiny_causal).eval()
    prompts = module.prompt_ids("test", module.tables["test"].rows(users, items).tolist(), items.tolist())
    assert len({len(p) for p in prompts}) > 5  # batches mix lengths: left padding is exercised
    assert len(module.prefix) > 40 and all(p[: len(module.prefix)] == module.prefix for p in prompts)  # run once a batch
    expected = [yes_probability_alone(reference, ids, module.yes_no) for ids in prompts]
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-5, rtol=0)
    assert module.yes_no == [module.encoder.tokenizer.encode(a, add_special_tokens=False)[0] for a in ("Yes.", "No.")]


def counting(recommender) -> list[int]:
    """The number of prompts each forward pass of ``recommender``'s LM reads, as a list that grows."""
    calls, forward = [], recommender.module._yes_logits
    recommender.module._yes_logits = lambda sequences: calls.append(len(sequences)) or forward(sequences)
    return calls


def test_zero_shot_trains_nothing_and_scores_each_prompt_once_across_runs(tiny_causal, tallrec, tmp_path):
    recommender = ranker(tiny_causal, tmp_path)
    before = {k: v.clone() for k, v in recommender.module.state_dict().items()}
    recommender.fit(tallrec, context(tmp_path))
    assert recommender.parameter_counts()[0] == 0 and recommender.effective()["epochs_run"] == 0
    assert all(torch.equal(v, before[k]) for k, v in recommender.module.state_dict().items() if k in before)
    calls = counting(recommender)
    test = tallrec.parts["test"].iloc[:10]
    users, items = torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy())
    first = recommender.score_pairs(users, items, "test")
    assert sum(calls) == 10 and torch.equal(first, recommender.score_pairs(users, items, "test")) and sum(calls) == 10
    another = ranker(tiny_causal, tmp_path)  # another run (another K or seed): the cache on disk answers
    another.fit(tallrec, context(tmp_path))
    again = counting(another)
    assert torch.equal(another.score_pairs(users, items, "test"), first) and not again
    trained = ranker(tiny_causal, tmp_path, "lora")  # an adapted model never reads it
    trained.module.prepare(tallrec, torch.device("cpu"))
    calls = counting(trained)
    trained.score_pairs(users, items, "test")
    assert sum(calls) == 10


def test_loss_is_the_causal_lms_on_the_answer_tokens(tiny_causal, tallrec, cache_dir):
    module = ranker(tiny_causal, cache_dir, "full_ft").module
    module.prepare(tallrec, torch.device("cpu"))
    train = tallrec.train.iloc[:6]
    rows = torch.arange(len(train))  # the train table's rows are the training pairs'
    labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
    assert 0 < labels.sum() < len(labels)  # both answers
    module.eval()  # no dropout: comparable with the reference
    loss = module((rows, torch.tensor(train["item"].to_numpy()), labels))
    reference = AutoModelForCausalLM.from_pretrained(tiny_causal).eval().requires_grad_(False)
    prompts = module.prompt_ids(TRAIN, rows.tolist(), train["item"].tolist())
    total, count = 0.0, 0
    for prompt, label in zip(prompts, labels.tolist()):
        answer = module.answer_ids[0 if label > 0.5 else 1]
        targets = torch.tensor([[-100] * len(prompt) + answer])
        total += float(reference(input_ids=torch.tensor([prompt + answer]), labels=targets).loss) * len(answer)
        count += len(answer)
    assert float(loss.detach()) == pytest.approx(total / count, abs=1e-5)
    assert module.prefix  # the shared prompt start ran once for the batch
    loss.backward()
    assert module.encoder.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_gradient_checkpointing_computes_the_same_loss_and_gradients(tiny_causal, tallrec, cache_dir):
    train = tallrec.train.iloc[:6]
    batch = (torch.arange(len(train)), torch.tensor(train["item"].to_numpy()), torch.tensor(train["label"].to_numpy(), dtype=torch.float32))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = ranker(tiny_causal, cache_dir, "lora", "strategy.config.lora_dropout=0.0",
                        f"encoder.gradient_checkpointing={checkpointing}").module
        module.prepare(tallrec, torch.device("cpu"))
        module.train()
        assert module.prefix and module.encoder.model.is_activation_checkpointing == checkpointing
        loss = module(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad}))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == checkpointed_grads.keys() and any(g.abs().sum() > 0 for g in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_a_long_history_loses_its_oldest_items_not_the_question(tiny_causal, tallrec, cache_dir):
    module = ranker(tiny_causal, cache_dir, "frozen", "encoder.max_length=180").module
    module.prepare(tallrec, torch.device("cpu"))
    row = tallrec.parts["test"].iloc[0]
    [ids] = module.prompt_ids("test", [int(module.tables["test"].rows(torch.tensor([row["user"]]), torch.tensor([row["item"]])))],
                              [int(row["item"])])
    text = module.encoder.tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) <= 180 - max(len(a) for a in module.answer_ids)
    assert "perez family" in text.lower() and "dave" in text.lower()  # the target and the newest history item
    assert "paris" not in text.lower()  # the oldest history item went first
    assert "kalifornia" in text.lower()  # the disliked one, newer than it, stays


def test_lora_trains_the_adapters_and_reloads_the_same_scores(tiny_causal, tallrec, cache_dir, tmp_path):
    settings = ["strategy.config.lora_dropout=0.05", "trainer.max_epochs=1", "model.module.samples_per_epoch=8", "trainer.grad_accum=1"]
    recommender = ranker(tiny_causal, cache_dir, "lora", *settings)
    test = tallrec.parts["test"].iloc[:8]
    users, items = torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy())
    recommender.module.prepare(tallrec, torch.device("cpu"))
    untrained = recommender.score_pairs(users, items, "test")
    recommender.fit(tallrec, context(tmp_path))
    trainable = {n for n, p in recommender.module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert recommender.effective()["epochs_run"] == 1
    assert recommender.cost_extras()["encoder_dtype"] == "float32"  # the record says which precision ran
    scores = recommender.score_pairs(users, items, "test")
    assert not torch.allclose(scores, untrained)
    recommender.save(tmp_path / "model")
    fresh = ranker(tiny_causal, cache_dir, "lora", *settings)
    fresh.load(tmp_path / "model", tallrec)
    torch.testing.assert_close(fresh.score_pairs(users, items, "test"), scores, atol=1e-6, rtol=0)


def test_the_final_evaluation_reads_the_scores_validation_computed_with_the_same_weights(tiny_causal, tallrec, cache_dir,
                                                                                        tmp_path, monkeypatch):
    recommender = ranker(tiny_causal, cache_dir, "lora", "trainer.max_epochs=2", "trainer.patience=2", "trainer.grad_accum=1",
                         "model.module.samples_per_epoch=8")
    monkeypatch.setattr("recexp.train.loop._better", lambda value, best, higher: False)  # epoch 0 stays the best
    recommender.fit(tallrec, context(tmp_path))  # validates every valid pair after each epoch, restores epoch 0's weights
    assert recommender.effective()["best_epoch"] == 0 and recommender.effective()["epochs_run"] == 2
    calls, evaluator, valid = counting(recommender), Evaluator(ks=[10]), tallrec.parts["valid"]
    remembered = evaluator.evaluate(recommender, tallrec, "valid", torch.device("cpu"))
    assert not calls  # the restored weights were scored on these prompts during training
    some = valid.iloc[::7]  # other calls, pair by pair: the same scores
    users, items = torch.tensor(some["user"].to_numpy()), torch.tensor(some["item"].to_numpy())
    assert recommender.score_pairs(users, items, "valid").isfinite().all() and not calls
    recommender.module._scores.clear()
    assert evaluator.evaluate(recommender, tallrec, "valid", torch.device("cpu")).metrics == remembered.metrics
    assert sum(calls) == len(valid)
    with torch.no_grad():  # other weights (a change outside training marks the module stale, as loading does)
        next(p for n, p in recommender.module.named_parameters() if "lora_B" in n).add_(0.5)
    recommender.module.stale = True
    changed = evaluator.evaluate(recommender, tallrec, "valid", torch.device("cpu"))
    assert sum(calls) == 2 * len(valid) and changed.metrics != remembered.metrics


def test_training_batches_hold_prompts_of_similar_length(tiny_causal, ml100k, cache_dir, tmp_path):
    split = build_or_load(ml100k, TallRecScenario(shots=256), 0, cache_dir)
    recommender = ranker(tiny_causal, cache_dir, "lora", "trainer.max_epochs=1", "trainer.grad_accum=1")
    module, seen = recommender.module, []
    forward = module.forward
    module.forward = lambda batch: seen.append(batch[0].tolist()) or forward(batch)
    module.prepare(split, torch.device("cpu"))
    module._outputs = lambda table, rows, items: torch.zeros(len(rows))
    recommender.fit(split, context(tmp_path, seed=0))
    drawn = module.train_data(split, 0)  # the epoch's pairs in their ungrouped order
    rows = [r for batch in seen for r in batch]
    assert sorted(rows) == sorted(drawn.rows[drawn.order].tolist()) and len(seen) == 32

    def padded(batches: list[list[int]]) -> int:
        return sum(max(lengths) * len(lengths) for lengths in
                   ([len(module._ids[(TRAIN, r, int(split.train["item"].iat[r]))]) for r in batch] for batch in batches))
    ungrouped = drawn.rows[drawn.order].tolist()
    assert padded(seen) < 0.97 * padded([ungrouped[i : i + 8] for i in range(0, 256, 8)])


def test_llm_ranker_refuses_an_encoder_without_a_language_model_head(tiny_bert, cache_dir):
    with pytest.raises(ConfigError, match="needs a causal language model"):
        ranker(tiny_bert, cache_dir)


def test_an_unknown_template_is_refused(tiny_causal, cache_dir):
    with pytest.raises(ConfigError, match="template='jinja' is unknown"):
        ranker(tiny_causal, cache_dir, "frozen", "model.module.template=jinja")
    with pytest.raises(ConfigError, match="has no chat template"):
        ranker(tiny_causal, cache_dir, "frozen", "model.module.template=chat")


def test_prompt_templates_may_name_only_the_fields_llm_ranker_fills(tiny_causal, cache_dir):
    with pytest.raises(ConfigError, match=r"model.module.input names 'rating', which llm_ranker does not fill: it fills liked, "):
        ranker(tiny_causal, cache_dir, "frozen", "model.module.input='{liked} {rating} {target}'")


def test_a_tokenizer_starting_yes_and_no_alike_is_refused(tiny_causal):
    encoder = TextEncoder(str(tiny_causal), progress=False)
    encoder.tokenizer.encode = lambda text, add_special_tokens=True: [7, 8]
    with pytest.raises(ConfigError, match="starts 'Yes.' and 'No.' with the same token"):
        LLMRanker(encoder, Frozen(), "Answer.", "{liked} {disliked} {target}", "{instruction} {input}")


def test_the_encoder_default_is_the_packaged_llm_and_an_explicit_encoder_wins():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose("config", overrides=["model=llm_ranker"])
        chosen = compose("config", overrides=["model=llm_ranker", "encoder=minilm"])
        other = compose("config", overrides=["model=lm_classifier"])
    assert default.encoder.name_or_path == "packaged:smollm2"
    assert chosen.encoder.name_or_path is None and other.encoder.name_or_path is None


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_p_yes_is_tallrecs_first_generated_step(tallrec, tmp_path):
    """TALLRec's evaluate.py: generate, softmax over the first step's scores of "Yes" and "No". Here on the packaged
    SmolLM2 in its chat template, five test prompts batched with left padding."""
    recommender = ranker("packaged:smollm2", tmp_path, "frozen")
    module = recommender.module
    assert module.chat and module.yes_no != [0, 0]
    recommender.fit(tallrec, context(tmp_path))
    test = tallrec.parts["test"].iloc[:5]
    users, items = torch.tensor(test["user"].to_numpy()), torch.tensor(test["item"].to_numpy())
    scores = recommender.score_pairs(users, items, "test")
    causal = AutoModelForCausalLM.from_pretrained(module.encoder.model.name_or_path).eval()
    expected = []
    for ids in module.prompt_ids("test", module.tables["test"].rows(users, items).tolist(), items.tolist()):
        out = causal.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True)
        expected.append(float(torch.softmax(out.scores[0][0, module.yes_no], -1)[0]))
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-4, rtol=0)
    assert module.encoder.tokenizer.decode(module.answer_ids[0]) == "Yes.<|im_end|>"
    assert module.encoder.tokenizer.decode(module.prefix).endswith("User Preference:")  # the system turn and the question
