"""The round: its plan (what to run), its phases (what each step does), the engine that
drives them with the failure policy, batch choice, and the per-round report."""
