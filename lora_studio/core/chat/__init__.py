"""Chat: talk to a base model or a fine-tune, alone or side by side, and run saved prompt sets.

``model`` loads a model with its adapter (``ChatModel``), streams answers with the user's sampling
settings and knows each family's end-of-turn tokens; ``prompt_sets`` saves and loads named sets of
prompts; ``prompt_set_run`` answers a set with several models into one comparison table. Depends on
``data`` (the chat template) and the base.
"""

from lora_studio.core.chat.model import (
    END_OF_TURN_TOKENS,
    ChatError,
    ChatModel,
    Reply,
    Sampling,
    check_adapter_fits,
    resolve_adapter,
)
from lora_studio.core.chat.prompt_set_run import (
    GREEDY,
    CellProgress,
    PromptSetResult,
    default_columns,
    describe_sampling,
    run_prompt_set,
)
from lora_studio.core.chat.prompt_sets import (
    PromptSet,
    PromptSetError,
    SavedPromptSet,
    delete_prompt_set,
    find_prompt_set,
    list_prompt_sets,
    load_prompt_set,
    prompt_sets_dir,
    sample_prompt_set,
    save_prompt_set,
    slug,
)

__all__ = [
    "END_OF_TURN_TOKENS",
    "GREEDY",
    "CellProgress",
    "ChatError",
    "ChatModel",
    "PromptSet",
    "PromptSetError",
    "PromptSetResult",
    "Reply",
    "Sampling",
    "SavedPromptSet",
    "check_adapter_fits",
    "default_columns",
    "delete_prompt_set",
    "describe_sampling",
    "find_prompt_set",
    "list_prompt_sets",
    "load_prompt_set",
    "prompt_sets_dir",
    "resolve_adapter",
    "run_prompt_set",
    "sample_prompt_set",
    "save_prompt_set",
    "slug",
]
