// Compiled by .ci/typescript-client against types generated from /openapi.json.
// Each assignment must compile; each @ts-expect-error must be a real error, so a type
// that degraded to `any` (or lost a field) fails the build.
import type { components, paths } from "./schema";

type PrivateUser = components["schemas"]["PrivateUser"];
type PublicUser = components["schemas"]["PublicUser"];
type TokenPair = components["schemas"]["TokenPair"];
type UserPage = components["schemas"]["UserPage"];
type Problem = components["schemas"]["Problem"];
type ResetConfirmation = components["schemas"]["ResetConfirmation"];

const user: PrivateUser = {
  id: "0b7c5f36-4c4e-4a8f-9d7e-1b2c3d4e5f60",
  email: "ada@example.com",
  email_verified: false,
  first_name: "Ada",
  last_name: "Lovelace",
  full_name: "Ada Lovelace",
  bio: null,
  avatar_url: null,
  is_active: true,
  is_superuser: false,
  created_at: "2026-11-26T16:39:00.123456Z",
  updated_at: "2026-11-26T16:39:00.123456Z",
};
export const bio: string | null = user.bio;
// @ts-expect-error bio may be null
export const bioText: string = user.bio;
// @ts-expect-error is_active is a boolean
export const activeText: string = user.is_active;
// @ts-expect-error a PrivateUser has an email
export const noEmail: PrivateUser = { ...user, email: undefined };

export const publicView: PublicUser = {
  id: user.id, first_name: "Ada", last_name: "Lovelace", full_name: "Ada Lovelace",
  bio: null, avatar_url: null,
};

const pair: TokenPair = {
  access_token: "a", token_type: "bearer", expires_in: 900, refresh_token: "r",
};
// @ts-expect-error token_type is the literal "bearer"
export const otherType: TokenPair = { ...pair, token_type: "mac" };
// @ts-expect-error expires_in is a number
export const textExpiry: TokenPair = { ...pair, expires_in: "900" };

const page: UserPage = { items: [user], next_cursor: null };
export const total: number | undefined = page.total;
export const first: PrivateUser = page.items[0];
// @ts-expect-error items are PrivateUser objects
export const numbers: UserPage = { items: [1], next_cursor: null };

type LoginBody =
  paths["/api/v1/auth/login"]["post"]["requestBody"]["content"]["application/json"];
export const login: LoginBody = { email: "ada@example.com", password: "secret words" };
type Me = paths["/api/v1/users/me"]["get"]["responses"][200]["content"]["application/json"];
export const me: Me = user;
type Denied =
  paths["/api/v1/users/me"]["get"]["responses"][401]["content"]["application/problem+json"];
export const denied: Denied & Problem = {
  type: "about:blank", title: "Unauthorized", status: 401,
  detail: "Authentication is required.", code: "not_authenticated",
};

export const resetByCode: ResetConfirmation = {
  email: "ada@example.com",
  code: "042917",
  new_password: "a fresh long passphrase",
};
// @ts-expect-error a reset confirmation needs the new password
export const resetWithoutPassword: ResetConfirmation = { token: "from the mail" };
// @ts-expect-error a user's email_verified is a boolean
export const verifiedText: string = user.email_verified;
