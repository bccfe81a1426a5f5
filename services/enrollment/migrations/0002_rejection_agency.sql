-- The agency whose TraineeEnrolled was rejected, so an agency can read its own rejections.
ALTER TABLE enrollment_rejection ADD COLUMN agency text;
