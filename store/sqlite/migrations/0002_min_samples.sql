-- 0002_min_samples: the fewest successful responses a study's window needs
-- (justrunit.Study.MinSamples); 0, the default, is the runner's own.

ALTER TABLE studies ADD COLUMN min_samples INTEGER NOT NULL DEFAULT 0;
