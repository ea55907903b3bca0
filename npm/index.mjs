import cjs from './index.js'

export const { Sandbox, SandboxError } = cjs
export default cjs
