"""RBS-QA: segment-recurrent memory QA with a belief-state tracker that revises, calibrates and halts."""
