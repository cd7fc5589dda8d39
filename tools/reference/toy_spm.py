"""Toy SentencePiece models for the SenseVoice fixtures.

The real `chn_jpn_yue_eng_ko_spectok.bpe.model` (25055 pieces) cannot be shipped in the test data, so the
fixtures use a small BPE model trained here on a fixed mixed-language corpus, with every special token of
the release vocabulary declared as a user-defined symbol (they decode literally, like in the release).

Training goes through `sentence_iterator` + `model_writer`, so no file name ends up in the serialized
trainer spec and the bytes are reproducible.
"""

import io

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

LANG_TAGS = ["<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>"]
EMO_TAGS = [
    "<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|FEARFUL|>", "<|DISGUSTED|>", "<|SURPRISED|>",
    "<|EMO_UNKNOWN|>",
]
EVENT_TAGS = [
    "<|Speech|>", "<|BGM|>", "<|Applause|>", "<|Laughter|>", "<|Cry|>", "<|Sneeze|>", "<|Breath|>",
    "<|Cough|>", "<|Sing|>", "<|Speech_Noise|>", "<|GBG|>", "<|Event_UNK|>",
]
ITN_TAGS = ["<|withitn|>", "<|woitn|>"]
SPECIAL_TOKENS = LANG_TAGS + EMO_TAGS + EVENT_TAGS + ITN_TAGS

# Ids of the special tokens in the release vocabulary (spec §5). The first group is confirmed by FunASR's
# model.py dicts; the rest of the events are not known and get free slots near <|Speech|>.
RELEASE_IDS = {
    "<|zh|>": 24884, "<|en|>": 24885, "<|yue|>": 24888, "<|ja|>": 24892, "<|ko|>": 24896,
    "<|nospeech|>": 24992, "<|Speech|>": 24993,
    "<|HAPPY|>": 25001, "<|SAD|>": 25002, "<|ANGRY|>": 25003, "<|NEUTRAL|>": 25004, "<|FEARFUL|>": 25005,
    "<|DISGUSTED|>": 25006, "<|SURPRISED|>": 25007, "<|EMO_UNKNOWN|>": 25009,
    "<|withitn|>": 25016, "<|woitn|>": 25017,
    # unconfirmed placements
    "<|BGM|>": 24994, "<|Applause|>": 24995, "<|Laughter|>": 24996, "<|Cry|>": 24997, "<|Sneeze|>": 24998,
    "<|Breath|>": 24999, "<|Cough|>": 25000, "<|Sing|>": 25010, "<|Speech_Noise|>": 25011, "<|GBG|>": 25012,
    "<|Event_UNK|>": 25013,
}
RELEASE_VOCAB_SIZE = 25055

EN = [
    "hello world this is a test of the speech recognition system",
    "hello world how are you doing today",
    "the quick brown fox jumps over the lazy dog",
    "please call stella and ask her to bring these things with her from the store",
    "six spoons of fresh snow peas five thick slabs of blue cheese",
    "we also need a small plastic snake and a big toy frog for the kids",
    "she can scoop these things into three red bags and we will go meet her",
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
    "rice is often served in round bowls",
    "the juice of lemons makes fine punch",
    "the box was thrown beside the parked truck",
    "four hours of steady work faced us",
    "a large size in stockings is hard to sell",
    "wonderful weather for a walk in the park",
    "transcribe the meeting and send me the summary",
    "the graphics card has twenty four gigabytes of memory",
    "open the window and let the fresh air in",
]
ZH = [
    "欢迎大家来体验达摩院推出的语音识别模型",
    "今天天气很好我们去公园散步吧",
    "你好世界这是一个语音识别的测试",
    "我们明天早上九点在会议室开会",
    "请把这份文件发给我的同事",
    "这个显卡有二十四个内存",
    "他说的话我一个字也没听清楚",
    "学习新的语言需要时间和耐心",
    "春天来了花儿都开了",
    "你好你好很高兴认识你",
]
YUE = [
    "你食咗飯未呀",
    "今日天氣好好我哋去行街啦",
    "唔該你講慢啲",
]
JA = [
    "こんにちは世界これはテストです",
    "今日はとても良い天気ですね",
    "音声認識のモデルを試してみましょう",
    "明日の会議は九時に始まります",
    "ありがとうございますまたよろしくお願いします",
    "東京の駅はとても大きいです",
]
KO = [
    "안녕하세요 반갑습니다",
    "음성 인식 시스템을 테스트합니다",
    "오늘 날씨가 정말 좋네요",
    "내일 아침 아홉 시에 회의가 있습니다",
    "감사합니다 다음에 또 만나요",
    "이 그래픽 카드는 메모리가 많습니다",
]
CORPUS = EN * 6 + ZH * 3 + YUE * 2 + JA * 3 + KO * 3


def train_toy_spm(vocab_size: int, add_dummy_prefix: bool, remove_extra_whitespaces: bool,
                  normalization_rule_name: str = "nmt_nfkc") -> bytes:
    """Train a BPE model on CORPUS with the special tokens as user-defined symbols; returns its bytes."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        user_defined_symbols=SPECIAL_TOKENS,
        add_dummy_prefix=add_dummy_prefix,
        remove_extra_whitespaces=remove_extra_whitespaces,
        normalization_rule_name=normalization_rule_name,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def release_sized_spm(base: bytes) -> bytes:
    """Spread a toy model over the release vocabulary size (25055) with the special tokens at their
    release ids. Ids 0..2 stay <unk>/<s>/</s>; the toy's normal pieces follow; the other slots are
    normal pieces `<fNNNNN>` with very low scores (reachable only by id)."""
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(base)
    fixed = list(proto.pieces[:3])
    normal = [p for p in proto.pieces[3:] if p.piece not in RELEASE_IDS]
    by_id = {v: k for k, v in RELEASE_IDS.items()}
    specials = {p.piece: p for p in proto.pieces if p.piece in RELEASE_IDS}
    new = spm_pb2.ModelProto()
    new.CopyFrom(proto)
    del new.pieces[:]
    normal_iter = iter(normal)
    for idx in range(RELEASE_VOCAB_SIZE):
        if idx < 3:
            new.pieces.append(fixed[idx])
        elif idx in by_id:
            new.pieces.append(specials[by_id[idx]])
        else:
            nxt = next(normal_iter, None)
            if nxt is not None:
                new.pieces.append(nxt)
            else:
                p = new.pieces.add()
                p.piece = f"<f{idx:05d}>"
                p.score = -1.0e4 - idx
                p.type = spm_pb2.ModelProto.SentencePiece.NORMAL
    new.trainer_spec.vocab_size = RELEASE_VOCAB_SIZE
    return new.SerializeToString()
