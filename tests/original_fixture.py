"""A stand-in for a checkout of the original LLAVIDAL release, for the paper-protocol tests.

The paper protocol reads the release's prompt wording at run time from the user's checkout (``--original-repo``).
This repository holds none of that wording; the stand-in has the same files and the same places in the code (an
f-string assigned to ``full_question`` in ``main()``, the ``system`` keyword of ``conv_llavidal_v1``, the ``content``
of chat-message dicts ...) holding wording made up for these tests. ``tests/data/original_protocol.json`` pins the
token ids that the original code produced with this very wording (measured once in a scratch environment with
transformers 4.41.1; see docs/parity.md).
"""
from __future__ import annotations

from pathlib import Path

SYSTEM = ("You are Tidy, a made-up helper for home videos. Look at the clip the user gives and answer in plain "
          "words.Keep to what the clip shows.")
INSTRUCTION = " Pick one option from the list below. Options: "
PARSE_PROMPT = (
    "\nLetter picker. Read a question, its options and a free reply, then name the option the reply means.\n"
    "Reply with the letter only, in brackets.\n\nSample 1:\nQuestion: Which fruit is shown?\nOptions: (A) apple "
    "(B) pear (C) plum (D) lime\nAnswer: it is a green pear on a plate\nThe letter is: (B)\n\nSample 2:\n"
    "Question: Where does the person go?\nOptions: (A) garden (B) garage (C) attic (D) cellar\nAnswer: they stay "
    "on the sofa\nThe letter is: (Z)\n=====\n\nNow the real one. Letter only.\nQuestion: {question}\n"
    "Options: {options}\nAnswer: {prediction}\nFinish the line: The letter is:\n    ")
PREFIXES = ("My pick is", "The pick is", "Pick is", "Pick", "The letter isThe option is", "Letter:Option:")
JUDGE_SYSTEM = ("You grade replies about home videos for {what}. Compare the reply with the reference.~~~~#RULES: "
                "- Give a whole number from 0 to 5.\n- Wording may differ from the reference.")
JUDGE_USER = ("Grade this reply:\n\nQuestion: {question}\nReference: {answer}\nReply: {lvlm_pred}\n\n"
              "Return only a Python dict with the key 'score' and a whole number. Like this: {{'score': 2}}.")
CONSISTENCY_USER = ("Grade this pair of replies:\n\nFirst question: {question1}\nSecond question: {question2}\n"
                    "Reference: {answer}\nFirst reply: {lvlm_pred1}\nSecond reply: {lvlm_pred2}\n\nReturn only a "
                    "Python dict with the key 'score' and a whole number. Like this: {{'score': 2}}.")
TSU_QUESTIONS = ("Tell me everything the people in the clip do, step by step.", "List what happens in the clip.",
                 "Which things does the person do in this clip?")
SUMMARY_SYSTEM = ("You merge clip notes into one account of a video. Write one paragraph of about 300 words. "
                  "~~~~#STEPS:- Keep the order of events.- Drop repeated facts.")
SUMMARY_USER = ("Clip notes in order: {mega_caption}. Now write the single account of the whole video, naming the "
                "actions and the objects.")
LEMMA_SUFFIX = "; reply with one option."
LEMMA_JOIN = " Options: "


def _f(text: str) -> str:
    """``text`` as the source of an f-string literal (its fields stay fields, its ``{{`` stay literal braces)."""
    return "f" + repr(text)


def _judge(func: str, what: str, user: str) -> str:
    return f'''
def {func}(question, answer, lvlm_pred, retries=10):
    score = 0
    for _ in range(retries):
        response = client.chat(model="llama3.1", messages=[
            {{"role": "system", "content": {JUDGE_SYSTEM.format(what=what)!r}}},
            {{"role": "user", "content": {_f(user)}}},
        ])
    return score
'''


def make_original_repo(root: Path) -> Path:
    """Write the stand-in release under ``root``; returns ``root``."""
    files = {
        "llavidal/video_conversation.py": f'''
class Conversation:
    def __init__(self, **kw):
        self.__dict__.update(kw)

conv_vicuna_v1_1 = Conversation(system="A talk between a person and a helpful program.", roles=("USER", "ASSISTANT"))
conv_llavidal_v1 = Conversation(
    system={SYSTEM[:60]!r}
    {SYSTEM[60:]!r},
    roles=("USER", "ASSISTANT"), version="v1", messages=(), offset=0, sep=" ", sep2="</s>",
)
conv_templates = {{"vicuna_v1_1": conv_vicuna_v1_1, "llavidal_v1": conv_llavidal_v1}}
''',
        "evaluation/ADL-X/eval_adlxmcq.py": f'''
def main(args):
    for sample in data:
        question = sample["question"]
        choices_str = " ".join(f"({{k}}) {{v}}" for k, v in sample["answer_choices"].items())
        full_question = f"{{question}}{INSTRUCTION}{{choices_str}}"
''',
        "evaluation/ADL-X/mcq_parsing_llm.py": f'''
def build_prompt(question, options, prediction):
    prompt = {_f(PARSE_PROMPT)}
    return prompt


def extract_characters_regex(s, choices=("(A)", "(B)")):
    s = s.strip()
    answer_prefixes = {list(PREFIXES)!r}
    return s
''',
        "evaluation/ADL-X/videochatgpt_scoring.py": "client = None\n" + "".join([
            _judge("get_correctness_score", "correctness", JUDGE_USER),
            _judge("get_detail_orientation_score", "detail", JUDGE_USER),
            _judge("get_context_score", "context", JUDGE_USER),
            _judge("get_temporal_score", "time order", JUDGE_USER),
            _judge("get_consistency_score", "consistency", CONSISTENCY_USER).replace(
                "(question, answer, lvlm_pred, retries=10)",
                "(question1, question2, answer, lvlm_pred1, lvlm_pred2, retries=10)")]),
        "evaluation/ADL-X/eval_tsu_desc.py": f'''
def merge_clip_desc(client, mega_caption):
    response = client.chat.completions.create(model="gpt-3.5-turbo-0125", messages=[
        {{"role": "system", "content": ({SUMMARY_SYSTEM!r})}},
        {{"role": "user", "content": {_f(SUMMARY_USER)}}},
    ], temperature=0.7, max_tokens=500)
    return response


def main(args):
    desc_question = {TSU_QUESTIONS[0]!r}
    for item in items:
        question_cons_1 = {TSU_QUESTIONS[1]!r}
        question_cons_2 = {TSU_QUESTIONS[2]!r}
''',
        "evaluation/ADL-X/legacy/multiproc_eval_Charades-AR.py": f'''
def run_inference(process_id, args):
    for sample in data:
        full_question = f"{{question}}{INSTRUCTION}{{choices_str}}"
''',
        "evaluation/ADL-X/legacy/multiproc_eval_TSU-TC.py": f'''
def run_inference(process_id, args):
    for sample in data:
        full_question = f"{{question}}{INSTRUCTION}{{choices_str}}"
''',
        "evaluation/ADL-X/legacy/multiproc_eval_SH-AR.py": '''
def run_inference(process_id, args):
    for sample in data:
        formatted_question = f"{question}{choices_str}"
''',
        "evaluation/ADL-X/legacy/multiproc_eval_LEMMA-TC.py": f'''
def run_inference(process_id, args):
    for sample in data:
        question = sample["question"] + {LEMMA_SUFFIX!r}
        formatted_question = f"{{question}}{LEMMA_JOIN}{{choices_str}}"
''',
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip("\n"))
    return root
