/**
 * A node:test reporter listing every skipped test with its reason once the run is over. `npm test`
 * runs it beside the spec reporter, so the end of a CI log says what did not run and why; under
 * CI (.ci/run) a missing outside tool fails its test instead (helpers.ts skipOrFail), and what is
 * left here are the skips without ../shared/assets.
 *
 * Plain JavaScript: node 20 loads reporters before `--import tsx` registers the TypeScript loader.
 */
import path from 'node:path';

/**
 * @param {AsyncIterable<{ type: string, data: { name: string, skip?: string | boolean, file?: string } }>} source
 *   node:test's events; a skipped test's test:pass (or test:fail) carries its reason in `skip`.
 */
export default async function* skippedTests(source) {
  const skipped = [];
  for await (const { type, data } of source) {
    if ((type === 'test:pass' || type === 'test:fail') && data.skip !== undefined && data.skip !== false) {
      const file = data.file ? `${path.relative(process.cwd(), data.file)}: ` : '';
      skipped.push(`  ${file}${data.name} # ${data.skip === true ? '(no reason given)' : data.skip}`);
    }
  }
  yield skipped.length
    ? `\nskipped tests (${skipped.length}):\n${skipped.join('\n')}\n`
    : '\nskipped tests: none\n';
}
