"""The parts every study report shares: markdown, figures and rank statistics."""
