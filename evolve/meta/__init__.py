"""How the search improves its own proposing: a bandit over proposers, prompt templates and edit modes
(`bandit`), lessons distilled from the store (`lessons`)."""
