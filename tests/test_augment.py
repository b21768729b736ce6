"""``tail=augment``: tail items' texts extended by a (tiny, random) generator or by their neighbours' keywords."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CONF, ROOT, save_tiny_generator

from recexp.augment import WORD, Augment, Augmented, Generator, neighbour_keywords, read_generated
from recexp.data import AtomicDataset
from recexp.errors import ConfigError
from recexp.interfaces import FitContext, RecommenderBase
from recexp.models.text.encoder import TextEncoder
from recexp.scenarios import RandomScenario
from recexp.scenarios.common import head_items
from recexp.tracking import NullLogger
from recexp.train import devices

THEMES = ["galaxy robots", "wedding romance", "haunted ghosts", "detective murder", "desert cowboys", "pirate treasure"]
FORMS = ["comedy", "drama", "thriller", "musical", "documentary"]
N_ITEMS = 30  # titles: every theme with every form, so neighbours share half their words
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"u{u}\ti{(u * 7 + k * 3) % N_ITEMS}\t{1 + (u + k) % 5}\t{u * 100 + k}\n" for u in range(40) for k in range(10))
ITEMS = "item_id:token\ttitle:token\n" + "".join(f"i{i}\t{THEMES[i % 6]} {FORMS[i % 5]}\n" for i in range(N_ITEMS))
PROMPT = "Describe {title}:"


def write_tiny_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.inter").write_text(INTER)
    (folder / "tiny.item").write_text(ITEMS)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("augment") / "data")


@pytest.fixture(scope="module")
def split(data):
    dataset = AtomicDataset(name="tiny", path=str(data), item_template="{title}").load()
    return RandomScenario().build(dataset, 0)


@pytest.fixture(scope="module")
def tail(split) -> list[int]:
    head = set(head_items(split.train, split.n_items, 0.2).tolist())
    return [i for i in range(split.n_items) if i not in head]


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> str:
    return str(save_tiny_generator(tmp_path_factory.mktemp("generator")))


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


class Reader(RecommenderBase):
    """A text model stand-in that keeps the split it was fitted, attached or loaded on."""

    name = "reader"

    def __init__(self, encoder: TextEncoder):
        self.encoder, self.split = encoder, None

    def fit(self, split, ctx):
        self.split = split

    def attach(self, split, device):
        self.split = split

    def load(self, directory, split, device="cpu"):
        self.split = split

    def score(self, users, stage):
        return torch.zeros(len(users), self.split.n_items)

    def effective(self):
        return {"epochs_run": 1}


def fitted(augment: Augment, split, encoder, tmp_path) -> Augmented:
    model = augment.wrap(Reader(encoder))
    model.fit(split, FitContext(NullLogger(), torch.device("cpu"), tmp_path, 0, progress=False))
    return model


def read_texts(model: Augmented) -> list[str]:
    return model.inner.split.dataset.item_text


def generate(generator: str, cache: Path) -> Augment:
    return Augment(method="generate", generator=generator, prompt=PROMPT, max_new_tokens=4, cache_dir=str(cache))


@pytest.mark.usefixtures("one_thread")
def test_generated_text_reaches_the_model_for_tail_items_only_and_is_read_back_from_the_cache(
        split, tail, generator, encoder, tmp_path):
    original = list(split.dataset.item_text)
    first = fitted(generate(generator, tmp_path / "cache"), split, encoder, tmp_path)
    expected = Generator(generator, None).write([PROMPT.format(title=original[i]) for i in tail], PROMPT, 4, 16,
                                                torch.device("cpu"))
    assert all(expected)  # the random generator writes something for every prompt
    texts = read_texts(first)
    assert [texts[i] for i in tail] == [f"{original[i]} {extra}" for i, extra in zip(tail, expected)]
    assert all(texts[i] == original[i] for i in range(split.n_items) if i not in tail)
    assert split.dataset.item_text == original  # the run's split is left as it was
    assert first.effective() == {"epochs_run": 1, "tail": "augment", "tail_method": "generate", "tail_generator": generator,
                                 "tail_dtype": "float32",
                                 "tail_max_new_tokens": 4, "tail_items_augmented": len(tail),
                                 "tail_generated": len(tail), "tail_cache_hits": 0}
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(tail)
    again = fitted(generate(generator, tmp_path / "cache"), split, encoder, tmp_path)
    assert read_texts(again) == texts
    assert again.effective()["tail_generated"] == 0 and again.effective()["tail_cache_hits"] == len(tail)
    assert torch.equal(again.score(torch.tensor([0, 1]), "test"), torch.zeros(2, split.n_items))


@pytest.mark.usefixtures("one_thread")
def test_a_damaged_cache_file_is_reported_and_generated_again(split, tail, generator, encoder, tmp_path, caplog):
    texts = read_texts(fitted(generate(generator, tmp_path), split, encoder, tmp_path))
    damaged = sorted(tmp_path.glob("*.json"))[0]
    entry = json.loads(damaged.read_text())
    damaged.write_text(json.dumps({**entry, "text": entry["text"] + " tampered"}))
    with caplog.at_level(logging.WARNING, logger="recexp.augment"):
        again = fitted(generate(generator, tmp_path), split, encoder, tmp_path)
    assert any(str(damaged) in r.getMessage() and "generating it again" in r.getMessage() for r in caplog.records)
    assert read_texts(again) == texts
    assert again.effective()["tail_generated"] == 1 and again.effective()["tail_cache_hits"] == len(tail) - 1
    assert read_generated(damaged, entry["prompt"]) == entry["text"]  # rewritten intact


@pytest.mark.usefixtures("one_thread")
def test_attach_and_load_also_read_the_augmented_texts(split, generator, encoder, tmp_path):
    model = fitted(generate(generator, tmp_path), split, encoder, tmp_path)
    texts = read_texts(model)
    model.inner.split = None
    model.attach(split, torch.device("cpu"))
    assert read_texts(model) == texts
    model.inner.split = None
    model.load(tmp_path, split, "cpu")
    assert read_texts(model) == texts


def test_a_generation_stopped_midway_keeps_the_texts_it_wrote(generator, tmp_path):
    prompts, cpu = [PROMPT.format(title=f"Film {n}") for n in range(6)], torch.device("cpu")
    stopped, calls = Generator(generator, tmp_path / "cache"), []
    generate = stopped.model.generate

    def stop_at_the_second_batch(**inputs):
        calls.append(len(inputs["input_ids"]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(**inputs)
    stopped.model.generate = stop_at_the_second_batch
    with pytest.raises(KeyboardInterrupt):
        stopped.write(prompts, PROMPT, 4, 2, cpu)
    again = Generator(generator, tmp_path / "cache")
    texts = again.write(prompts, PROMPT, 4, 2, cpu)
    assert (again.cache_hits, again.generated) == (2, 4)  # the first batch's two texts were kept
    assert texts == Generator(generator, None).write(prompts, PROMPT, 4, 2, cpu)


def test_the_generator_runs_in_the_precision_asked_and_caches_apart(generator, tmp_path, monkeypatch):
    prompts, cpu = [PROMPT.format(title="Heat")], torch.device("cpu")
    full = Generator(generator, tmp_path / "cache")
    half = Generator(generator, tmp_path / "cache", dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16 and half.fingerprint() != full.fingerprint()
    full.write(prompts, PROMPT, 4, 1, cpu)
    assert half.write(prompts, PROMPT, 4, 1, cpu)[0] and half.generated == 1  # not read from fp32's cache
    assert Augment(method="generate", generator=generator, dtype="bf16").describe()["tail_dtype"] == "bfloat16"
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(devices, "bf16_supported", lambda device, native=native: native)
        auto = Augment(method="generate", generator=generator, dtype="auto", run_device="cpu")
        assert auto.describe()["tail_dtype"] == expected
    with pytest.raises(ConfigError, match="tail.dtype='int8' is unknown"):
        Augment(method="generate", generator=generator, dtype="int8")


def test_a_seq2seq_generator_is_loaded_as_one(tmp_path):
    model = Generator(str(save_tiny_generator(tmp_path / "t5", seq2seq=True)), None)
    assert model.seq2seq and model.model.config.is_encoder_decoder
    texts = model.write(["Describe galaxy robots comedy:", "Describe haunted ghosts drama:"], PROMPT, 3, 2,
                        torch.device("cpu"))
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)


CHAT = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


@pytest.mark.usefixtures("one_thread")
def test_an_instruct_generator_reads_each_prompt_as_the_users_turn_of_its_chat_template(generator, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = shutil.copytree(generator, tmp_path / "instruct")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(folder)
    chat, plain = Generator(str(folder), tmp_path / "cache"), Generator(generator, tmp_path / "cache")
    assert chat.chat and not plain.chat
    prompt = "Describe galaxy robots comedy:"
    [written] = chat.write([prompt], PROMPT, 4, 1, torch.device("cpu"))
    ids = tokenizer(f"<user>{prompt}<assistant>", add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = AutoModelForCausalLM.from_pretrained(folder).generate(ids, max_new_tokens=4, do_sample=False,
                                                                pad_token_id=tokenizer.pad_token_id)
    assert written == " ".join(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split())
    plain.write([prompt], PROMPT, 4, 1, torch.device("cpu"))
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # the chat-wrapped text is cached apart


@pytest.mark.slow
def test_the_packaged_smollm2_describes_a_movie_in_words(tmp_path):
    writer = Augment(method="generate", cache_dir=str(tmp_path / "cache"), models_dir=str(tmp_path / "models"), progress=False)
    assert writer.generator.chat
    [text] = writer.generator.write(["Describe the movie Toy Story (1995), genres Animation Children's Comedy, in one sentence:"],
                                    writer.prompt, writer.max_new_tokens, 1, torch.device("cpu"))
    print("SmolLM2 wrote:", text)
    words = text.lower().split()
    assert len(words) >= 8 and any(w.strip(".,'\"") in {"toy", "story", "woody", "buzz", "toys", "animated"} for w in words)


def test_keywords_by_hand():
    texts = ["red apple", "red cherry", "green apple", "the blue sky"]
    embeddings = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.9, 0.44, 0], [0.5, 0, 0.87], [0.2, 1.0, 0]]), dim=1)
    # item 0's nearest: 1 (cos .90: cherry; red is its own), 2 (cos .50: green), 3 (cos .20: blue, sky; 'the' is a stop word)
    # item 3's nearest: 1 (cos .61: red, cherry), 0 (cos .20: red, apple) -> red .80, cherry .61
    assert neighbour_keywords(texts, torch.tensor([0, 3]).numpy(), 2, 2, embeddings) == ["cherry green", "red cherry"]
    assert neighbour_keywords(texts, torch.tensor([0]).numpy(), 5, 3, embeddings) == ["cherry green blue sky"]


@pytest.mark.usefixtures("one_thread")
def test_keywords_add_neighbour_words_to_tail_items_only_and_are_deterministic(split, tail, encoder, tmp_path):
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    original = list(split.dataset.item_text)
    first = fitted(Augment(keywords=3, neighbours=4, cache_dir=str(tmp_path)), split, encoder, tmp_path)
    texts = read_texts(first)
    changed = [i for i in range(split.n_items) if texts[i] != original[i]]
    assert changed and set(changed) <= set(tail)
    for i in changed:
        assert texts[i].startswith(original[i] + " ")
        added = texts[i][len(original[i]) + 1 :].split()
        assert 1 <= len(added) <= 3 and not set(added) & set(WORD.findall(original[i].lower()))
        assert not set(added) & ENGLISH_STOP_WORDS and set(added) <= {w for t in original for w in t.split()}
    assert first.effective() == {"epochs_run": 1, "tail": "augment", "tail_method": "keywords", "tail_keywords": 3,
                                 "tail_neighbours": 4, "tail_items_augmented": len(changed)}
    assert read_texts(fitted(Augment(keywords=3, neighbours=4, cache_dir=str(tmp_path)), split, encoder, tmp_path)) == texts


@pytest.mark.parametrize("settings, message", [
    (dict(method="paraphrase"), r"tail.method='paraphrase' is unknown for tail=augment; choose one of generate, keywords"),
    (dict(keywords=0), r"tail.keywords=0 is not allowed: it must be an integer >= 1"),
    (dict(neighbours=0), r"tail.neighbours=0 is not allowed"),
    (dict(max_new_tokens=0), r"tail.max_new_tokens=0 is not allowed"),
    (dict(batch_size=0), r"tail.batch_size=0 is not allowed"),
    (dict(keywords=2.5), r"tail.keywords=2.5 is not allowed"),
    (dict(head_fraction=1), r"tail.head_fraction=1 is not allowed: it must be a number in \(0, 1\)"),
    (dict(method="generate", generator=None), r"tail.method=generate needs tail.generator"),
    (dict(method="generate", generator="/no/such/generator"),
     r"Could not load tail.generator '/no/such/generator'(.|\n)*point tail.generator at a local folder"),
])
def test_bad_augment_settings_are_one_clear_config_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        Augment(**settings)


def test_a_prompt_naming_a_missing_field_names_the_fields_there_are(split, generator, encoder, tmp_path):
    augment = Augment(method="generate", generator=generator, prompt="Describe {plot}:", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"tail.prompt names field 'plot', which the item features lack; "
                                          r"available fields: item_id, title"):
        fitted(augment, split, encoder, tmp_path)


def test_models_that_read_no_item_text_are_refused():
    from recexp.models.recbole import RecBoleRecommender

    with pytest.raises(ConfigError, match="tail=augment extends item texts, but model BPR reads no item text"):
        Augment().wrap(RecBoleRecommender("BPR"))


def test_the_tail_group_takes_the_scenarios_head_fraction():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cold = compose("config", overrides=["tail=augment", "scenario=cold_item", "scenario.head_fraction=0.3"])
        tallrec = compose("config", overrides=["tail=augment", "scenario=tallrec"])
    assert cold.tail.head_fraction == 0.3 and tallrec.tail.head_fraction == 0.2  # tallrec has no head segments


@pytest.mark.subprocess
@pytest.mark.usefixtures("one_thread")
def test_a_text_tower_run_with_keyword_augmentation_records_the_counts(data, tmp_path):
    env = {**os.environ, "RECEXP_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "recexp", "model=text_tower", "strategy=frozen", "scenario=cold_item", "tail=augment",
         "tail.method=keywords", "trainer.max_epochs=1", "logger=none", "progress=false", "dataset=atomic",
         f"dataset.path={data}", "dataset.name=tiny", "dataset.item_template='{title}'", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    effective = record["effective"]
    assert record["status"] == "ok" and effective["tail"] == "augment" and effective["tail_method"] == "keywords"
    assert 0 < effective["tail_items_augmented"] < N_ITEMS and effective["epochs_run"] == 1
    assert record["config"]["tail"]["head_fraction"] == 0.2
