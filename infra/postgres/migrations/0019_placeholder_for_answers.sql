-- A placeholder for the answers branch's 0019 (issue #32 splits 0019-0023 between five branches),
-- so that this branch's 0020 has no gap below it. Creates nothing. Delete it at the merge, where
-- the answers branch brings the real 0019.
SELECT 1;
