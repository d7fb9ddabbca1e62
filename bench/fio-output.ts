// The part of fio's `--output-format=json` the benchmarks read (fio 3.33), typed once.

export interface FioReadJob {
  read: { iops: number; clat_ns: { mean: number; max: number; percentile: Record<string, number> } };
  /** Percent of one CPU over the job's runtime. */
  usr_cpu: number;
  sys_cpu: number;
}

/** The first job of a fio JSON report; fails loudly when fio printed something else. */
export function firstFioJob(output: string): FioReadJob {
  const report = JSON.parse(output) as { jobs?: FioReadJob[] };
  const job = report.jobs?.[0];
  if (!job?.read?.clat_ns) throw new Error(`fio printed no read job: ${output.slice(0, 200)}`);
  return job;
}
