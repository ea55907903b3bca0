import cjs from './index.js'

export const { Sandbox, Session, SandboxError } = cjs
export default cjs
