/**
 * What captioning costs: a price table per model in US dollars per million tokens, the cost of a
 * response's `usage`, and the estimate `booth caption --dry-run` prints before anything is paid.
 * Defaults are OpenAI's public list prices (platform.openai.com/docs/pricing, standard tier, text
 * tokens; images are billed as input tokens) at the time of writing; the Batch API bills half.
 * Prices change: pass your own with `--price-input`/`--price-output` (or {@link PriceTable}).
 */

/** Price of one model, US dollars per 1,000,000 tokens. */
export interface ModelPrice {
  input: number;
  output: number;
}

/** Model name → price. A dated snapshot (`gpt-4o-mini-2024-07-18`) uses its family's entry. */
export type PriceTable = Readonly<Record<string, ModelPrice>>;

/** Public list prices, USD per 1M tokens (standard tier). */
export const DEFAULT_PRICES: PriceTable = {
  'gpt-4o-mini': { input: 0.15, output: 0.6 },
  'gpt-4o': { input: 2.5, output: 10 },
  'gpt-4.1-mini': { input: 0.4, output: 1.6 },
  'gpt-4.1-nano': { input: 0.1, output: 0.4 },
  'gpt-4.1': { input: 2, output: 8 },
};

/** The Batch API's discount on both input and output tokens. */
export const BATCH_DISCOUNT = 0.5;

/**
 * The price of `model`: an exact entry, else the longest entry the name starts with followed by
 * `-` (so `gpt-4o-mini-2024-07-18` finds `gpt-4o-mini`, never `gpt-4o`).
 * @returns the price, or null when the table does not know the model
 */
export function priceFor(model: string, table: PriceTable = DEFAULT_PRICES): ModelPrice | null {
  const exact = table[model];
  if (exact) return exact;
  const family = Object.keys(table)
    .filter((k) => model.startsWith(`${k}-`))
    .sort((a, b) => b.length - a.length)[0];
  return family ? (table[family] ?? null) : null;
}

/**
 * Cost of tokens at a price.
 * @param batch - billed through the Batch API ({@link BATCH_DISCOUNT})
 * @returns US dollars, or null without a price
 * @example tokenCost({ inputTokens: 3000, outputTokens: 60 }, { input: 0.15, output: 0.6 }) // 0.000486
 */
export function tokenCost(usage: { inputTokens: number; outputTokens: number }, price: ModelPrice | null, batch = false): number | null {
  if (!price) return null;
  const usd = (usage.inputTokens * price.input + usage.outputTokens * price.output) / 1e6;
  return batch ? usd * BATCH_DISCOUNT : usd;
}

/**
 * Input tokens an image is billed as, per OpenAI's vision guide:
 * - GPT-4o family (tiles): `low` is a flat base; `high`/`auto` fit the image in 2048², scale the
 *   short side to 768, then base + per-tile tokens for each 512 px tile. GPT-4o: 85 + 170/tile;
 *   GPT-4o mini bills images at 2833 + 5667/tile so that they cost about what GPT-4o charges.
 * - GPT-4.1 mini/nano (patches): 32 px patches, at most 1536 (the image shrunk to fit), times the
 *   model's multiplier (1.62 mini, 2.46 nano; 1 for gpt-4.1); `detail` does not change it.
 * Other models (local servers) get the GPT-4o tile rule as a stand-in.
 * @param size - pixel size of the image sent
 * @returns estimated input tokens for the image
 */
export function imageTokens(model: string, size: { width: number; height: number }, detail: 'low' | 'high' | 'auto'): number {
  const patchMultiplier = model.startsWith('gpt-4.1-mini') ? 1.62 : model.startsWith('gpt-4.1-nano') ? 2.46 : model.startsWith('gpt-4.1') ? 1 : null;
  if (patchMultiplier !== null) {
    let { width, height } = size;
    const patches = (w: number, h: number) => Math.ceil(w / 32) * Math.ceil(h / 32);
    if (patches(width, height) > 1536) {
      const k = Math.sqrt((1536 * 32 * 32) / (width * height));
      width = Math.floor(width * k);
      height = Math.floor(height * k);
    }
    return Math.ceil(Math.min(1536, patches(width, height)) * patchMultiplier);
  }
  const [base, tile] = model.startsWith('gpt-4o-mini') ? [2833, 5667] : [85, 170];
  if (detail === 'low') return base;
  let { width, height } = size;
  const fit = Math.min(1, 2048 / Math.max(width, height));
  width *= fit;
  height *= fit;
  const short = Math.min(width, height);
  if (short > 768) {
    width *= 768 / short;
    height *= 768 / short;
  }
  return base + tile * Math.ceil(width / 512) * Math.ceil(height / 512);
}

/** Format US dollars for people: four decimals under a cent, two otherwise. */
export function formatUsd(usd: number | null): string {
  if (usd === null) return 'unknown (no price for this model; pass --price-input/--price-output)';
  return usd < 0.01 && usd > 0 ? `$${usd.toFixed(4)}` : `$${usd.toFixed(2)}`;
}
