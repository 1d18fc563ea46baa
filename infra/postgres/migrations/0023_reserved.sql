-- Reserved: another change of issue #33 takes this number; creates nothing (the file keeps 1..LATEST
-- complete in this branch and is replaced at merge).
SELECT 1;
