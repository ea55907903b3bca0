import cjs from './index.js'

export const { Sandbox, Session, Pool, SandboxError } = cjs
export default cjs
