"""The usage ledger: records, storage backends, and the batched writer."""
