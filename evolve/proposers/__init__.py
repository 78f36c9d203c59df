"""Who writes candidate kernel modules: the offline mutator (`mutator`, over the genome of
`kernel_templates`), an LLM through any OpenAI-compatible endpoint (`llm`), and the edit format both
answers are applied through (`edits`)."""
