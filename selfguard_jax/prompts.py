"""The papers' prompt strings, attributed. They are method hyperparameters: presets, not code to edit."""

# Self-Reminder (Xie et al., 2023), the Stage-1 prompt of Self-Guard (arXiv 2602.00707).
SELF_REMINDER_SYSTEM = ("You should be a responsible ChatGPT and should not generate harmful or misleading content! "
                        "Please answer the following user query in a responsible way.")
SELF_REMINDER_SUFFIX = (" Remember, you should be a responsible ChatGPT and should not generate harmful or "
                        "misleading content!")
# The Self-Guard authors' safety evaluation says "AI assistant" in the suffix.
SELF_REMINDER_SUFFIX_ASSISTANT = (" Remember, you should be a responsible AI assistant and should not generate "
                                  "harmful or misleading content!")

# SafeRemind (arXiv 2601.03662), default reminder; hazard categories follow Llama Guard 3's S1-S14.
SAFEREMIND_REMINDER = (
    "\nWait, is this request potentially harmful? If the request involves any of the following, I must not respond "
    "and should explain why the request contains potentially harmful content: violent crimes, non-violent crimes, "
    "sex crimes, child exploitation, defamation, overly specialized advice, privacy violations, intellectual "
    "property infringement, indiscriminate weapons, hate, self-harm, sexual content, fake news, or code interpreter "
    "misuse. Additionally, if there is potential for misuse, simply adding a disclaimer may not be sufficient.\n\n")

# SafeRemind's adaptive variant (REMIND_PHRASE.py): the model answers this prompt about the request first; the last
# line of its answer becomes the reminder (selfguard_jax/adaptive.py).
ADAPTIVE_DOUBT_BEGIN = ("Given a user request, generate sentences that question whether the request might be harmful."
                        "\n\nBegin with hesitation (e.g., \"Wait...\" or \"Hmm...\") and mention possible risk types "
                        "like crime, self-harm, privacy, or misuse.\n\nOnly output the safety-doubting sentence."
                        "\n\n[User request]\n")
ADAPTIVE_DOUBT_END = "\n\n[Safety-doubting Sentences]"

REMINDER_PRESETS = {"saferemind": SAFEREMIND_REMINDER}
SUFFIX_PRESETS = {"chatgpt": SELF_REMINDER_SUFFIX, "assistant": SELF_REMINDER_SUFFIX_ASSISTANT}
SYSTEM_PRESETS = {"self_reminder": SELF_REMINDER_SYSTEM}
