// A short fixed-seed pass of the in-process session fuzzer (the campaign runs the same loop for
// hours: npm run fuzz), the corpus kept in the repo replayed as a regression pass, and a check
// that the fuzzer does see what it claims to look for.
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { Corpus, emptyTotals, replayCorpus, runSession, sessionFuzzer, type Finding } from '../../dist/fuzz/campaign.js';
import { FD_KINDS, SessionFuzzer, type SessionCase } from '../../dist/fuzz/session-fuzz.js';
import { Random, caseSeed } from '../../dist/fuzz/random.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SEED = 0x5eed;
const CASES = 1500;
const CORPUS = fileURLToPath(new URL('../../fuzz/corpus', import.meta.url));
const crashesDir = mkdtempSync(join(tmpdir(), 'vut-fuzz-test-'));
const fuzzers: SessionFuzzer[] = [];
afterAll(() => {
  for (const fuzzer of fuzzers) fuzzer.dispose();
  rmSync(crashesDir, { recursive: true, force: true });
});

describe('session fuzzing (fixed seed)', () => {
  it(`${CASES} mutated message sequences through codec and session: no findings`, async () => {
    const fuzzer = sessionFuzzer(undefined);
    fuzzers.push(fuzzer);
    const findings: Finding[] = [];
    const totals = emptyTotals();
    const corpus = new Corpus(join(crashesDir, 'corpus'), 0);
    await runSession(fuzzer, {
      seed: SEED,
      totals,
      crashesDir,
      corpus,
      onFinding: (f) => findings.push(f),
      stop: () => totals.cases >= CASES,
    });
    expect(findings.map((f) => `${f.iteration}: ${f.finding}`)).toEqual([]);
    expect(totals.cases).toBe(CASES);
    // The cases reach deep enough to matter: many messages, many distinct outcomes and refusals.
    expect(totals.messages).toBeGreaterThan(10 * CASES);
    expect(corpus.behaviours).toBeGreaterThan(150);
  });

  it('the corpus kept in the repo replays without findings', async () => {
    const corpus = new Corpus(CORPUS, 0);
    const fuzzer = sessionFuzzer(corpus);
    fuzzers.push(fuzzer);
    const findings: Finding[] = [];
    const replayed = await replayCorpus(fuzzer, {
      seed: SEED,
      totals: emptyTotals(),
      crashesDir,
      corpus,
      onFinding: (f) => findings.push(f),
      stop: () => true,
    });
    expect(replayed).toBeGreaterThan(0);
    expect(findings.map((f) => f.finding)).toEqual([]);
  });

  it('reports a request that fails with anything but a refusal, with the sequence that did it', async () => {
    const fuzzer = new SessionFuzzer();
    fuzzers.push(fuzzer);
    // A device bug: SET_STATUS throws a TypeError, which the session must not take for a refusal.
    Object.assign(fuzzer.device, {
      setStatus: () => {
        throw new TypeError('device bug');
      },
    });
    let found: string | undefined;
    for (let iteration = 0; iteration < 2000 && !found; iteration++) {
      found = (await fuzzer.run(fuzzer.generate(new Random(caseSeed(SEED, iteration))))).finding;
    }
    expect(found).toMatch(/request handler failed.*SET_STATUS TypeError: device bug/s);
  });

  it('property (fast-check, shrinking): any sequence of templates with byte edits and fd swaps gives no finding', async () => {
    const fuzzer = new SessionFuzzer();
    fuzzers.push(fuzzer);
    const templates = fuzzer.templates;
    const message = fc.record({
      template: fc.nat({ max: templates.length - 1 }),
      edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }),
      fds: fc.option(fc.array(fc.constantFrom(...FD_KINDS), { maxLength: 3 }), { nil: undefined }),
      needReply: fc.boolean(),
    });
    const build = (messages: (typeof message extends fc.Arbitrary<infer T> ? T : never)[]): SessionCase => ({
      requireSealedMemory: false,
      messages: messages.map((m) => {
        const bytes = templates[m.template].bytes.slice();
        if (m.needReply) bytes[4] |= 8;
        // Edits stay clear of the header's size field, so the stream keeps its framing.
        for (const [at, value] of m.edits) if (bytes.length > 12) bytes[12 + (at % (bytes.length - 12))] = value;
        return { bytes, fds: [...(m.fds ?? templates[m.template].fds)] };
      }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(message, { minLength: 1, maxLength: 24 }), async (messages) => {
        const result = await fuzzer.run(build(messages));
        return result.finding === undefined;
      }),
      { seed: SEED, numRuns: 300 },
    );
  });
});
