"""Released preference data in and out of a run directory: RLAIF-V-Dataset, VLFeedback, POVID, and TRL."""
