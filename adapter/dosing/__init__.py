"""The dose engine: treatment position, BSA, schedules, holds and modifications, preparation,
and the check of orders written by others."""
