"""Response-only labels: the trained tokens are exactly the response(s) and their end token."""

import pytest

from ct_train.data.templates import chat_template_for, resolve_template, tokenize_example, with_chat_template
from ct_train.data.tokenizer import byte_tokenizer
from ct_train.errors import ConfigError

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _ex(prompt="What is 2+2?", response="4", input="", messages=()):
    return dict(prompt=prompt, input=input, response=response, messages=list(messages))


def _targets(tok, out):
    return tok.decode([t for t in out["labels"] if t != -100])


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_byte_tokenizer_round_trips_cjk(tok):
    text = "把这些字倒过来写：天地"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) and tok.decode(ids) == text


@pytest.mark.parametrize("template", ["alpaca", "simple"])
def test_only_response_and_eos_are_labels(tok, template):
    out = tokenize_example(_ex(input="ctx"), template, tok, max_seq_len=1024)
    assert _targets(tok, out) == "4</s>"
    assert out["input_ids"][0] == tok.bos_token_id
    text = tok.decode(out["input_ids"])
    assert "### Input:\nctx" in text and text.endswith("### Response:\n4</s>")
    assert out["n_target"] == 2  # "4" and </s>, both after the shift


def test_bare_template_is_prompt_newline_response(tok):
    out = tokenize_example(_ex(prompt="a=3 ?a", response="3"), "bare", tok, max_seq_len=64)
    assert tok.decode(out["input_ids"]) == "<s>a=3 ?a\n3</s>" and _targets(tok, out) == "3</s>"
    with pytest.raises(ConfigError, match="data.template=bare takes prompt/response records"):
        tokenize_example(_ex(messages=[{"role": "user", "content": "hi"}]), "bare", tok, max_seq_len=64)


def test_multi_turn_alpaca_trains_every_assistant_turn(tok):
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    out = tokenize_example(_ex(messages=msgs), "alpaca", tok, 1024)
    assert _targets(tok, out) == "A1</s>A2</s>"


def test_chat_template_incremental_spans(tok):
    tok = byte_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    assert resolve_template("auto", tok) == "chat"
    msgs = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    out = tokenize_example(_ex(messages=msgs), "chat", tok, 1024)
    assert _targets(tok, out) == "A1</s>A2</s>"
    assert tok.decode(out["input_ids"]).startswith("<|user|>Q1</s><|assistant|>A1")


def test_chat_needs_a_chat_template(tok):
    assert resolve_template("auto", tok) == "alpaca"
    with pytest.raises(ConfigError, match="no chat template"):
        resolve_template("chat", tok)


def test_truncation_keeps_length_and_counts(tok):
    out = tokenize_example(_ex(response="x" * 50), "simple", tok, max_seq_len=40)
    assert len(out["input_ids"]) == len(out["labels"]) == 40
    assert out["full_length"] > 40
    assert out["n_target"] == sum(1 for t in out["labels"][1:] if t != -100)
    short = tokenize_example(_ex(prompt="p" * 60), "simple", tok, max_seq_len=20)
    assert short["n_target"] == 0  # the response was cut off entirely


class _CountingTokenizer:
    """The tokenizer, recording the longest text it was asked to tokenise."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0

    def __call__(self, text, **kw):
        self.longest = max(self.longest, len(text))
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _bpe_tokenizer():
    """A real BPE vocabulary with long merged tokens, trained here on repetitive text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["the cat sat on the mat " * 20, "abcabcabcabc " * 40, "x" * 300, "把这些字倒过来写 " * 10]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("template", ["simple", "chat"])
def test_text_is_cut_before_it_is_tokenised_and_the_tokens_kept_are_the_same(tok, template):
    """Memory is bounded by max_seq_len, not by the record: a field longer than field_char_limit is cut
    before the tokenizer sees it, and the max_seq_len tokens kept equal those of the uncut text."""
    from ct_train.data.templates import field_char_limit, max_token_chars

    bpe = with_chat_template(_bpe_tokenizer(), "simple") if template == "chat" else _bpe_tokenizer()
    assert max_token_chars(bpe) > 8  # merged tokens spell many characters: the limit must allow for them
    for t in (tok, bpe):
        if template == "chat" and t is tok:
            t = with_chat_template(tok, "simple")
        limit = field_char_limit(t, 48)
        for ex in (
            _ex(prompt="the cat " * 5000),
            _ex(response="x" * 200_000),
            _ex(
                prompt="q",
                messages=[{"role": "user", "content": "abcabcabcabc " * 9000}, {"role": "assistant", "content": "ok"}],
            ),
            _ex(response="the cat sat"),  # short: nothing is cut
        ):
            if ex["messages"] and template != "chat":
                continue
            counting = _CountingTokenizer(t)
            cut = tokenize_example(ex, template, counting, 48, char_limit=limit)
            full = tokenize_example(ex, template, t, 48)
            assert cut["input_ids"] == full["input_ids"] and cut["labels"] == full["labels"]
            assert cut["n_target"] == full["n_target"]
            assert (cut["full_length"] > 48) == (full["full_length"] > 48)
            assert counting.longest <= limit + 200  # (+ the template's own text around the field)


def _inference_ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Add 2 and 2."},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 more?"},
    {"role": "assistant", "content": "7"},
]


@pytest.mark.parametrize("template", ["alpaca", "simple", "bare"])
def test_exported_chat_template_renders_the_training_tokens(tok, template):
    """final/'s tokenizer gets a chat template when it has none: apply_chat_template gives the ids
    training saw (BOS included), and the generation prompt is the training prompt."""
    exported = with_chat_template(tok, template)
    assert exported is not tok and not getattr(tok, "chat_template", None)  # the run's tokenizer is untouched
    single = [{"role": "user", "content": "Reverse: abc"}, {"role": "assistant", "content": "cba"}]
    records = [(_ex(prompt="Reverse: abc", response="cba"), single)]
    if template != "bare":  # (bare takes no chat messages in training)
        records.append((_ex(messages=MULTI_TURN), MULTI_TURN))
    for record, messages in records:
        trained = tokenize_example(record, template, tok, max_seq_len=4096)
        assert _inference_ids(exported, messages) == trained["input_ids"]
    prompt = _inference_ids(exported, single[:1], add_generation_prompt=True)
    first = tokenize_example(records[0][0], template, tok, 4096)
    start = next(i for i, label in enumerate(first["labels"]) if label != -100)
    assert prompt == first["input_ids"][:start]


def test_a_tokenizer_with_a_chat_template_is_exported_as_it_is(tok):
    tok2 = with_chat_template(tok, "alpaca")
    assert with_chat_template(tok2, "simple") is tok2
    with pytest.raises(ValueError, match="data.template=chatml"):
        chat_template_for("chatml")
