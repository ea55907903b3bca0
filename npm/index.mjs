import cjs from './index.js'

export const { Sandbox, Session, Process, Pool, SandboxError } = cjs
export default cjs
